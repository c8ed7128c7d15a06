"""The fast path at the level of a Swin block: the attention branch on image-order tokens, the MLP on
oneDNN, and, without autograd, the whole block in cache-sized groups of windows.

Functions here take the model's modules as arguments (``block``: a
:class:`maskdn.model.SwinTransformerBlock`, of which they read ``attn``, ``norm1``, ``norm2``, ``mlp``,
``window_size``, ``shift_size`` and ``attention()``; ``attn``: its
:class:`~maskdn.model.WindowAttention`); this package never imports :mod:`maskdn.model`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..windows import WindowLayout, window_layout
from .attention import _PermuteRows, attend_windows, kept_keys, key_tables, windows_by_kept_count
from .kernels import kernel_available
from .linear import linear, linear_gelu

__all__ = ["KEPT_KEY_CUTS", "WINDOW_GROUP", "attention_branch", "mlp", "swin_block"]

WINDOW_GROUP = 64
"""Windows carried through a whole block at once without autograd: their activations stay in cache."""

KEPT_KEY_CUTS = (0.25, 0.5, 0.75, 0.95)
"""With autograd and a token mask, the windows sorted by kept count are attended in groups cut at
these fractions, each padded to its own largest count (the last 5% holds the long tail): at the
training shape (1024 windows, 75% masked) 1.7 padding keys per window on average, against 2.8 for
four equal groups and 11.5 for one."""


def swin_block(block: nn.Module, x: Tensor, size: tuple[int, int], token_keep: Tensor | None = None) -> Tensor:
    """The block on tokens ``x`` ``[B, H·W, C]``: with autograd, the attention branch (``block.attention``)
    and the MLP on oneDNN, each with its residual; without, in groups of windows (:func:`_in_window_groups`).

    Args:
        block: The :class:`maskdn.model.SwinTransformerBlock`.
        x: Tokens ``[B, H·W, C]`` in row-major image order.
        size: ``(H, W)`` in tokens (multiples of the window size).
        token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1), windows in shifted-window order.

    Returns:
        ``[B, H·W, C]``, ``x``'s dtype.
    """
    if not torch.is_grad_enabled():
        layout = window_layout(*size, block.window_size, block.shift_size, x.device)
        return _in_window_groups(block, x, layout, token_keep)
    x = x + block.attention(x, size, token_keep)
    return x + mlp(block.mlp, block.norm2(x))


def attention_branch(attn: nn.Module, x: Tensor, size: tuple[int, int], shift: int, norm: nn.Module,
                     token_keep: Tensor | None = None) -> Tensor:
    """The attention branch on tokens ``x`` ``[B, H·W, C]``: ``norm``, windows shifted by ``shift``,
    attention, back to image order (the residual is the caller's). The cyclic shift and the window
    partition are one gather (:class:`~maskdn.windows.WindowLayout`); with a token mask the windows are
    gathered sorted by kept count (:func:`~maskdn.fastpath.attention.windows_by_kept_count`) and attended
    over their kept keys in groups cut at :data:`KEPT_KEY_CUTS`.

    Args:
        attn: The :class:`maskdn.model.WindowAttention`.
        x: Tokens ``[B, H·W, C]`` in row-major image order.
        size: ``(H, W)`` in tokens.
        shift: Cyclic shift in tokens (0 or ws // 2).
        norm: The block's pre-norm.
        token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1).

    Returns:
        ``[B, H·W, C]`` in image order.
    """
    H, W = size
    B, L, C = x.shape
    ws = attn.window_size
    layout = window_layout(H, W, ws, shift, x.device)
    cuts = KEPT_KEY_CUTS
    if token_keep is None and kernel_available(x):
        # every token kept: the fused kernel attends all 64 keys (and an empty folded key) in less time
        # than the batched matmuls of head dim 8 and their backward (docs/performance.md); every window
        # has the same count, so one group
        token_keep, cuts = x.new_ones(B * layout.n_windows, ws * ws, 1), ()
    if token_keep is None:
        windows = norm(x).index_select(1, layout.order).view(-1, ws * ws, C)
        return attend_windows(attn, windows, layout).view(B, L, C).index_select(1, layout.inverse)
    order = windows_by_kept_count(layout, B, token_keep)
    tables = key_tables(attn, layout.kind_mask)
    h = kept_keys(attn, x.reshape(B * L, C), order.rows.view(-1, ws * ws), order.keep, order.kind,
                  tables, norm, cuts)
    return _PermuteRows.apply(h.view(B * L, C), order.inverse, order.rows).view(B, L, C)


def mlp(module: nn.Module, x: Tensor) -> Tensor:
    """The :class:`~maskdn.model.Mlp` ``module`` on ``x`` on oneDNN's float32 matmul where it applies
    (:mod:`maskdn.fastpath.linear`), the GELU fused without autograd.

    Args:
        module: The :class:`~maskdn.model.Mlp` (reads ``fc1``, ``fc2``).
        x: ``[..., C]``.

    Returns:
        ``[..., C]``.
    """
    return linear(linear_gelu(x, module.fc1.weight, module.fc1.bias), module.fc2.weight, module.fc2.bias)


def _in_window_groups(block: nn.Module, x: Tensor, layout: WindowLayout, token_keep: Tensor | None) -> Tensor:
    """The fast path without autograd: the whole block in window order, a group of windows at a time.

    Norms, MLP and residuals act per token and attention per window, so the block commutes with the
    gather into windows; one gather in, one out, and each group's activations stay in cache.
    """
    B, L, C = x.shape
    N, G = block.window_size**2, WINDOW_GROUP
    attn = block.attn
    if token_keep is None:
        xw = x.index_select(1, layout.order).view(-1, N, C)  # a copy: updated in place
    else:  # windows sorted by kept count, so a group's windows pad to similar counts
        order = windows_by_kept_count(layout, B, token_keep)
        tables = key_tables(attn, layout.kind_mask)
        xw = x.reshape(B * L, C).index_select(0, order.rows).view(-1, N, C)
        local_rows = torch.arange(G * N, device=x.device).view(G, N)  # a group's windows in its rows
    for s in range(0, xw.shape[0], G):
        g = xw[s : s + G]
        if token_keep is None:
            g += attend_windows(attn, block.norm1(g), layout, offset=s)
        else:
            g += kept_keys(attn, g.view(-1, C), local_rows[: g.shape[0]], order.keep[s : s + G],
                           order.kind[s : s + G], tables, block.norm1)
        g += mlp(block.mlp, block.norm2(g))
    if token_keep is None:
        return xw.view(B, L, C).index_select(1, layout.inverse)
    return xw.view(B * L, C).index_select(0, order.inverse).view(B, L, C)
