"""Window bookkeeping shared by every attention path: partition and reverse, the relative-position
index, the shift mask, the cached :class:`WindowLayout` of a feature map, and the token ↔ image views.

Tokens are ``[B, H·W, C]`` in row-major image order; windows are ``[B·nW, ws·ws, C]`` with the ``nW``
windows of an image in row-major order. Nothing here has weights: the attention modules live in
:mod:`maskdn.model`, the CPU fast path in :mod:`maskdn.fastpath`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "WindowLayout",
    "border_shift_masks",
    "image_to_tokens",
    "relative_position_index",
    "shift_attention_mask",
    "tokens_to_image",
    "window_layout",
    "window_partition",
    "window_reverse",
]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """``[B, H, W, C] → [B·nW, ws·ws, C]`` with windows in row-major order (H, W multiples of ws).

    SwinIR's ``window_partition`` (Liang et al. 2021), as in the Swin Transformer (Liu et al. 2021).

    Args:
        x: Feature map ``[B, H, W, C]`` (channels last), any dtype and device; H and W multiples of ``ws``.
        ws: Window side in tokens (pixels).

    Returns:
        ``[B·nW, ws², C]`` with ``nW = (H/ws)·(W/ws)``, windows of one image row-major, tokens of a
        window row-major; same dtype and device (a copy).
    """
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: Tensor, ws: int, H: int, W: int) -> Tensor:
    """``[B·nW, ws·ws, C] → [B, H, W, C]``; inverse of :func:`window_partition`.

    Args:
        windows: Windows ``[B·nW, ws², C]`` as :func:`window_partition` lays them out.
        ws: Window side in tokens.
        H: Height of the map in tokens (a multiple of ``ws``).
        W: Width of the map in tokens (a multiple of ``ws``).

    Returns:
        The feature map ``[B, H, W, C]``, same dtype and device.
    """
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


@functools.lru_cache(maxsize=8)
def relative_position_index(ws: int) -> Tensor:
    """``[ws², ws²]`` index into the ``(2ws−1)²`` relative-position bias table (row-major offsets).

    The Swin Transformer's relative position index (Liu et al. 2021), used unchanged by SwinIR: entry
    ``[i, j]`` is ``(dy + ws − 1)·(2ws − 1) + (dx + ws − 1)`` for the offset ``(dy, dx)`` of token ``i``
    from token ``j`` within a window. Cached per ``ws``; callers must not modify the result in place.

    Args:
        ws: Window side in tokens.

    Returns:
        int64 tensor ``[ws², ws²]`` on the CPU, values in ``[0, (2ws−1)² − 1]``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_attention_mask(H: int, W: int, ws: int, shift: int) -> Tensor:
    """``[nW, ws², ws²]`` additive mask (0 or −100) for shifted windows of an ``H×W`` map.

    After the cyclic shift, a window at the border holds pixels from up to four image regions that are
    not neighbours; tokens from different regions must not attend to each other. The reference path
    computes it on every call, as the authors' code does; the fast path keeps a :class:`WindowLayout`.
    This is the Swin Transformer's shift mask (Liu et al. 2021), as SwinIR builds it.

    Args:
        H: Height of the map in tokens (a multiple of ``ws``).
        W: Width of the map in tokens (a multiple of ``ws``).
        ws: Window side in tokens.
        shift: Cyclic shift in tokens, ``0 < shift < ws`` (SwinIR: ``ws // 2``).

    Returns:
        float32 tensor ``[nW, N, N]`` (``N = ws²``, ``nW = (H/ws)·(W/ws)``, windows row-major) on the CPU:
        0 where query and key lie in the same region, −100 elsewhere (added to the attention logits).
    """
    region = torch.zeros(1, H, W, 1)
    cnt = 0
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for h in bands:
        for w in bands:
            region[:, h, w, :] = cnt
            cnt += 1
    ids = window_partition(region, ws).squeeze(-1)  # [nW, N]
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def border_shift_masks(ws: int, shift: int, device: torch.device | str = "cpu") -> Tensor:
    """The three distinct shift masks ``[3, ws², ws²]`` (0 or −100) of shifted windows, for any map size.

    After the cyclic roll by ``−shift`` only the last window row and column mix image regions (see
    :func:`shift_attention_mask`): in the last row, rows ``ws − shift …`` of a window belong to another
    region than the rows above them; in the last column, likewise for columns. So a window needs
    ``masks[0]`` (row split) in the last row, ``masks[1]`` (column split) in the last column, ``masks[2]``
    (both) in the corner, and no mask elsewhere, whatever ``H`` and ``W``. Built from the window's token
    coordinates alone, with no data-dependent shapes, so the device path adds it under ``torch.compile``
    without a host round trip. Equals :func:`shift_attention_mask` window by window (tested).

    Args:
        ws: Window side in tokens.
        shift: Cyclic shift in tokens, ``0 < shift < ws``.
        device: Where the masks are built.

    Returns:
        float32 ``[3, N, N]`` (``N = ws²``) on ``device``: row split, column split, corner.
    """
    t = torch.arange(ws * ws, device=device)
    row = (t // ws) >= ws - shift  # [N]: the token lies in the rolled-in rows of a last-row window
    col = (t % ws) >= ws - shift
    row_split = row[:, None] != row[None, :]
    col_split = col[:, None] != col[None, :]
    split = torch.stack([row_split, col_split, row_split | col_split])
    return torch.zeros(split.shape, device=device).masked_fill(split, -100.0)


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """Everything the fast path derives from ``(H, W, window, shift)``, computed once and cached.

    ``order`` gathers the tokens ``[B, H·W, C]`` straight into shifted windows (the cyclic roll and the
    window partition as one copy) and ``inverse`` scatters them back. The shift mask takes only a few
    distinct values per window: ``kind`` ``[nW]`` indexes them in ``kind_mask`` ``[n_kinds, N, N]``
    (interior, right column, bottom row, corner; one all-zero kind without a shift), and
    ``border_kind`` ``[n_kinds]`` says which kinds are not all zero (the last window row and column).
    Build it with :func:`window_layout`.

    Attributes:
        order: int64 ``[H·W]``: token index (row-major, in the unshifted image) of each window position,
            windows row-major as :func:`window_partition` gives them after the roll by ``−shift``.
        inverse: int64 ``[H·W]``: the inverse permutation of ``order``.
        n_windows: Windows per image, ``nW = (H/ws)·(W/ws)``.
        shifted: Whether ``shift > 0``.
        kind: int64 ``[nW]``: each window's index into ``kind_mask``.
        kind_mask: float32 ``[n_kinds, N, N]``: the distinct shift masks (0 or −100, see
            :func:`shift_attention_mask`).
        border_kind: bool ``[n_kinds]``: which kinds have any −100 entry.
    """

    order: Tensor
    inverse: Tensor
    n_windows: int
    shifted: bool
    kind: Tensor
    kind_mask: Tensor
    border_kind: Tensor

    def border(self, start: int, count: int) -> tuple[Tensor, Tensor] | None:
        """Of the windows ``start … start+count−1`` (numbered across the batch), the positions that need
        the shift mask and their masks ``[n, N, N]``; None without a shift.

        Args:
            start: Number of the first window, counted across the batch (window ``w`` is window
                ``w mod nW`` of its image).
            count: Number of windows.

        Returns:
            None without a shift; else ``(hit, masks)``: int64 ``hit`` ``[n]``, positions in ``0 … count−1``
            of the windows whose shift mask is not all zero, and float32 ``masks`` ``[n, N, N]`` (0 or −100),
            on the layout's device.
        """
        if not self.shifted:
            return None
        kind = self.kind[torch.arange(start, start + count, device=self.kind.device) % self.n_windows]
        hit = self.border_kind[kind].nonzero().squeeze(1)
        return hit, self.kind_mask[kind[hit]]


@functools.lru_cache(maxsize=32)
def window_layout(H: int, W: int, ws: int, shift: int, device: torch.device) -> WindowLayout:
    """The cached :class:`WindowLayout` of an ``H×W`` map (H, W multiples of ``ws``) on ``device``.

    Built outside inference mode: a layout first made under ``torch.inference_mode`` must still serve
    later training steps.

    Args:
        H: Height of the map in tokens.
        W: Width of the map in tokens.
        ws: Window side in tokens.
        shift: Cyclic shift in tokens (0: regular windows).
        device: Device the layout's tensors live on.

    Returns:
        The :class:`WindowLayout` (shared: an LRU cache of 32 layouts).
    """
    with torch.inference_mode(False):
        return _build_window_layout(H, W, ws, shift, device)


def _build_window_layout(H: int, W: int, ws: int, shift: int, device: torch.device) -> WindowLayout:
    index = torch.arange(H * W).view(1, H, W, 1)
    if shift:
        index = torch.roll(index, shifts=(-shift, -shift), dims=(1, 2))
    order = window_partition(index, ws).reshape(-1)
    n_windows = (H // ws) * (W // ws)
    kind, kind_mask = torch.zeros(n_windows, dtype=torch.long), torch.zeros(1, ws * ws, ws * ws)
    if shift:
        kind_mask, kind = torch.unique(shift_attention_mask(H, W, ws, shift), dim=0, return_inverse=True)
    return WindowLayout(order.to(device), torch.argsort(order).to(device), n_windows, bool(shift), kind.to(device),
                        kind_mask.to(device), kind_mask.flatten(1).any(1).to(device))


def tokens_to_image(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """Tokens ``[B, H·W, C]`` as an image ``[B, C, H, W]`` without a copy: a channels-last view, which
    convolutions take as is (a transpose to contiguous NCHW costs more than a 3x3 conv's arithmetic).

    Args:
        tokens: ``[B, H·W, C]`` in row-major image order, contiguous.
        size: ``(H, W)`` in pixels.

    Returns:
        A view ``[B, C, H, W]`` of ``tokens`` (channels-last strides), same dtype and device.
    """
    B, _, C = tokens.shape
    return tokens.reshape(B, *size, C).permute(0, 3, 1, 2)


def image_to_tokens(image: Tensor) -> Tensor:
    """An image ``[B, C, H, W]`` as tokens ``[B, H·W, C]``; a view when the image is channels-last.

    Args:
        image: ``[B, C, H, W]``, any dtype and device.

    Returns:
        ``[B, H·W, C]`` in row-major image order (a copy unless ``image`` is channels-last).
    """
    return image.permute(0, 2, 3, 1).flatten(1, 2)
