"""Masked SwinIR: the SwinIR denoiser with the changes of masked image training.

Chen et al., "Masked Image Training for Generalizable Deep Image Denoising" (CVPR 2023) change SwinIR
(Liang et al., 2021) in three ways, all here:

* the first convolution is 1x1, so one token is one pixel and masking a pixel masks a token;
* there is no global residual: the network outputs the clean image, not the noise (the authors' code
  also drops the long skip from the first conv's features to the body's output);
* every window attention zeroes a random fraction of its input tokens before the qkv projection
  (``attn_mask_ratio``), in training and, by default, at test time too (``attn_mask_at_eval``).

Module and parameter names follow the authors' code so their checkpoints load unchanged (see
:func:`checkpoint_filter_fn`). Derived tensors (relative-position index, shift masks) are rebuilt here,
never read from a file. File layout, bottom-up: config, attention (with its literal and SDPA paths),
block, residual group, model, checkpoint filter, presets. Window bookkeeping lives in
:mod:`maskdn.windows`, padding in :mod:`maskdn.geometry`, and the default CPU fast path in
:mod:`maskdn.fastpath`, which takes these modules as arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fastpath
from .dataclass_io import from_plain_dict, plain_dict
from .errors import MaskdnError, check_int, problem
from .geometry import pad_to_multiple
from .masking import token_keep_mask
from .windows import (
    border_shift_masks,
    image_to_tokens,
    relative_position_index,
    shift_attention_mask,
    tokens_to_image,
    window_partition,
    window_reverse,
)

__all__ = [
    "ModelConfig",
    "MaskedSwinIR",
    "PRESETS",
    "preset",
    "checkpoint_filter_fn",
]

RGB_MEAN = (0.4488, 0.4371, 0.4040)
"""Per-channel mean of DIV2K that SwinIR subtracts from RGB inputs (zeros for other channel counts)."""


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and masking of a :class:`MaskedSwinIR`. Defaults are the paper's masked model.

    ``attn_mask_ratio`` is the fraction of tokens zeroed before the qkv projection of every window
    attention (0 disables it). ``attn_mask_at_eval`` keeps that masking on in ``eval()`` mode, as the
    paper does for train/test consistency; test outputs are then stochastic. Architecture fields are
    SwinIR's (Liang et al. 2021); the masking fields are Chen et al., CVPR 2023.

    Attributes:
        in_chans: Image channels (3: RGB, with :data:`RGB_MEAN` subtracted).
        embed_dim: Token width C.
        depths: Swin blocks per residual group.
        num_heads: Attention heads per residual group (each divides ``embed_dim``).
        window_size: Window side ws in tokens (pixels); N = ws².
        mlp_ratio: MLP hidden width / ``embed_dim``.
        resi_connection: ``"1conv"`` or ``"3conv"`` (the conv closing each residual group).
        img_range: Scale of the normalised input (SwinIR's ``img_range``).
        attn_mask_ratio: Fraction of tokens dropped per attention, in [0, 1) (paper: 0.75).
        attn_mask_at_eval: Keep the attention mask in ``eval()`` mode.

    Raises:
        MaskdnError: ``"invalid ModelConfig: ..."`` listing every problem (unequal or empty
            ``depths``/``num_heads``, ``embed_dim`` not divisible, bad ``resi_connection``,
            ``attn_mask_ratio`` outside [0, 1), non-integer sizes).
    """

    in_chans: int = 3
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    resi_connection: Literal["1conv", "3conv"] = "3conv"
    img_range: float = 1.0
    attn_mask_ratio: float = 0.75
    attn_mask_at_eval: bool = True

    def __post_init__(self) -> None:
        # Accept lists (from JSON/TOML) but store tuples so the config stays hashable.
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        problems = []
        if len(self.depths) != len(self.num_heads) or not self.depths:
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and of equal length")
        if any(self.embed_dim % h for h in self.num_heads):
            problems.append(f"embed_dim {self.embed_dim} must be divisible by every num_heads {self.num_heads}")
        if self.resi_connection not in ("1conv", "3conv"):
            problems.append(f"resi_connection must be '1conv' or '3conv', not {self.resi_connection!r}")
        if self.resi_connection == "3conv" and self.embed_dim % 4:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by 4 for '3conv'")
        if not 0.0 <= self.attn_mask_ratio < 1.0:
            problems.append(f"attn_mask_ratio must be in [0, 1), not {self.attn_mask_ratio}")
        for name in ("window_size", "in_chans", "embed_dim"):
            problems += problem(check_int, name, getattr(self, name))
        if problems:
            raise MaskdnError("invalid ModelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists).

        Returns:
            ``{field name: value}`` for every field.
        """
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped.

        Args:
            d: ``{field name: value}``; missing fields take their defaults.

        Returns:
            The validated :class:`ModelConfig`.

        Raises:
            MaskdnError: ``"unknown ModelConfig field(s): ... (valid: ...)"``, or ``"invalid ModelConfig: ..."``.
        """
        return from_plain_dict(cls, d)


# --------------------------------------------------------------------------------------------------
# Attention, MLP, block, residual group
# --------------------------------------------------------------------------------------------------


ATTENTION_IMPLS = ("fast", "reference", "sdpa", "batched")
"""Interchangeable attention paths; all compute the same function (tests hold them to 1e-4)."""


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a learned relative-position bias.

    :meth:`forward` takes a block's tokens ``[B, H·W, C]`` in image order and returns its attention
    branch in image order; ``token_keep`` ``[B·nW, N, 1]`` (0 or 1, ``N = ws²``) zeroes masked tokens
    before the qkv projection. Three paths, chosen by ``impl`` (see :meth:`MaskedSwinIR.set_attention`):

    * ``reference``: the literal computation of the authors' code: roll, window partition, then
      :meth:`reference` (scale, matmul, add the bias, add the shift mask, softmax, matmul, each a
      separate pass); the yardstick for tests and benchmarks;
    * ``sdpa``: the same windows through :meth:`sdpa`, ``scaled_dot_product_attention`` with bias and
      shift mask as one float mask (on CPU it falls back to the math kernel; on GPU it can use a fused
      one);
    * ``batched``: the device path: every window of the batch in one attention, the shift mask added to
      the last window row and column only (:func:`maskdn.windows.border_shift_masks`, a buffer), no
      tensor made on the host and no shape that depends on the data, so it runs asynchronously on a GPU
      and ``torch.compile`` traces it in one graph (see ``docs/gpu.md``);
    * ``fast`` (default): on CPU the fast path, :func:`maskdn.fastpath.attention_branch`: the roll and
      the partition as one gather and, with a token mask, attention over the kept keys only; on any
      other device the ``batched`` path (the kept keys' counts would be read on the host every block).

    SwinIR's ``WindowAttention`` (Liang et al. 2021; Swin Transformer, Liu et al. 2021) with the token
    mask of Chen et al., CVPR 2023.

    Args:
        dim: Token width C.
        window_size: Window side ws in tokens.
        num_heads: Heads; each has width ``dim // num_heads`` and the scale ``head_dim^−0.5``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size).clone(), persistent=False)
        # the shift masks of SwinIR's shift (ws // 2) for the batched path; derived, never saved
        self.register_buffer("border_masks", border_shift_masks(window_size, window_size // 2), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.impl = "fast"

    def forward(self, x: Tensor, size: tuple[int, int], shift: int, norm: nn.Module,
                token_keep: Tensor | None = None) -> Tensor:
        """The attention branch on tokens ``x`` ``[B, H·W, C]`` of an ``H×W`` map: ``norm`` (the block's
        pre-norm), windows cyclically shifted by ``shift``, attention, back to image order (the residual
        is the caller's).

        Args:
            x: Tokens ``[B, H·W, C]`` in row-major image order (H, W multiples of ``window_size``).
            size: ``(H, W)`` in tokens.
            shift: Cyclic shift in tokens (0 or ``window_size // 2``).
            norm: The block's pre-norm (``nn.LayerNorm(C)``).
            token_keep: Optional keep mask ``[B·nW, N, 1]``, values 0 or 1 in ``x``'s dtype, windows in the
                shifted-window order.

        Returns:
            ``[B, H·W, C]`` in image order, ``x``'s dtype.
        """
        if self.impl == "fast" and x.device.type == "cpu":
            return fastpath.attention_branch(self, x, size, shift, norm, token_keep)
        if self.impl in ("fast", "batched"):
            return self.batched(x, size, shift, norm, token_keep)
        # the literal sequence: roll, partition, attend, reverse, roll back
        H, W = size
        B, L, C = x.shape
        ws = self.window_size
        h = norm(x).view(B, H, W, C)
        shift_mask = None
        if shift:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
            shift_mask = shift_attention_mask(H, W, ws, shift).to(device=x.device, dtype=x.dtype)
        attend = self.reference if self.impl == "reference" else self.sdpa
        h = window_reverse(attend(window_partition(h, ws), shift_mask, token_keep), ws, H, W)
        if shift:
            h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
        return h.reshape(B, L, C)

    def batched(self, x: Tensor, size: tuple[int, int], shift: int, norm: nn.Module,
                token_keep: Tensor | None = None) -> Tensor:
        """The device path of :meth:`forward` (same arguments and result): the literal sequence with the
        shift mask added to the border windows only.

        Roll and partition, zero the masked tokens, one qkv projection and one batched attention over
        all ``B·nW`` windows (scores ``[B·nW, heads, N, N]``, bias and border masks added, softmax),
        output projection, reverse and roll back. Every step is a fixed-shape tensor operation on
        ``x``'s device: nothing is read back to the host (no synchronisation, so a GPU runs ahead of
        Python), and ``torch.compile`` fuses the element-wise work around the two matmuls. Masked
        tokens are attended densely: skipping them (the CPU path's kept keys) needs each window's kept
        count on the host. Under bf16 autocast the scores stay bf16 (the bias is cast to them) and the
        softmax runs as autocast decides (float32 on CUDA).

        Args:
            x: Tokens ``[B, H·W, C]`` in row-major image order (H, W multiples of ``window_size``).
            size: ``(H, W)`` in tokens.
            shift: Cyclic shift in tokens (0 or ``window_size // 2``; others build their masks per call).
            norm: The block's pre-norm.
            token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1), windows in the shifted-window order.

        Returns:
            ``[B, H·W, C]`` in image order, ``x``'s dtype (the autocast dtype under autocast).
        """
        H, W = size
        B, L, C = x.shape
        ws, heads = self.window_size, self.num_heads
        N, d = ws * ws, C // heads
        h = norm(x).view(B, H, W, C)
        if shift:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
        h = window_partition(h, ws)
        if token_keep is not None:
            h = h * token_keep
        q, k, v = self.qkv(h).view(-1, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # each [B·nW, heads, N, d]
        scores = (q * self.scale) @ k.transpose(-2, -1)
        scores = scores + self.relative_position_bias().to(scores.dtype)
        if shift:
            masks = self.border_masks if shift == ws // 2 else border_shift_masks(ws, shift, x.device)
            masks = masks.to(scores.dtype)
            grid = scores.view(B, H // ws, W // ws, heads, N, N)  # in place: the add's backward keeps no input
            grid[:, -1, :-1] += masks[0]
            grid[:, :-1, -1] += masks[1]
            grid[:, -1, -1] += masks[2]
        out = self.proj((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, N, C))
        h = window_reverse(out, ws, H, W)
        if shift:
            h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
        return h.reshape(B, L, C)

    def relative_position_bias(self) -> Tensor:
        """``[heads, N, N]`` bias gathered from the table.

        Returns:
            ``[num_heads, N, N]`` (N = ws²) in the table's dtype, indexed by
            :func:`maskdn.windows.relative_position_index` (Swin Transformer convention); contiguous,
            as every use broadcasts it over thousands of windows: the permuted view made the fast
            path's per-head copy of it 10× slower (9% of the small preset's forward on CPU).
        """
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, -1).permute(2, 0, 1).contiguous()

    def reference(self, x: Tensor, shift_mask: Tensor | None = None, token_keep: Tensor | None = None) -> Tensor:
        """The literal path; ``shift_mask`` ``[nW, N, N]`` covers every window.

        Args:
            x: Windows ``[B·nW, N, C]`` (N = ws²), before the qkv projection.
            shift_mask: Optional additive mask ``[nW, N, N]`` (0 or −100), see
                :func:`maskdn.windows.shift_attention_mask`.
            token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1) multiplied into ``x`` before qkv.

        Returns:
            ``[B·nW, N, C]`` after the output projection.
        """
        B_, N, C = x.shape
        if token_keep is not None:
            x = x * token_keep
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if shift_mask is not None:
            nW = shift_mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + shift_mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))

    def sdpa(self, x: Tensor, shift_mask: Tensor | None = None, token_keep: Tensor | None = None) -> Tensor:
        """``scaled_dot_product_attention`` with the bias (and shift mask) as its float mask.

        Args:
            x: Windows ``[B·nW, N, C]`` (N = ws²), before the qkv projection.
            shift_mask: Optional additive mask ``[nW, N, N]`` (0 or −100).
            token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1) multiplied into ``x`` before qkv.

        Returns:
            ``[B·nW, N, C]`` after the output projection.
        """
        B_, N, C = x.shape
        if token_keep is not None:
            x = x * token_keep
        qkv = self.qkv(x).view(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B_, heads, N, d]
        mask = self.relative_position_bias().to(q.dtype)
        if shift_mask is not None:
            nW = shift_mask.shape[0]
            mask = mask.unsqueeze(0) + shift_mask.to(q.dtype).unsqueeze(1)  # [nW, heads, N, N]
            shape5 = (B_ // nW, nW, self.num_heads, N, C // self.num_heads)
            q, k, v = q.reshape(shape5), k.reshape(shape5), v.reshape(shape5)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.reshape(B_, self.num_heads, N, -1).transpose(1, 2).reshape(B_, N, C))


class Mlp(nn.Module):
    """Two linear layers with GELU: ``[..., C] → [..., C]`` (on the fast path: :func:`maskdn.fastpath.mlp`).

    Args:
        dim: Input and output width C.
        hidden: Hidden width (``C·mlp_ratio``).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``fc2(gelu(fc1(x)))``.

        Args:
            x: ``[..., C]``.

        Returns:
            ``[..., C]``, same dtype.
        """
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted) window attention and MLP, each with a residual; tokens ``[B, H·W, C]``.

    On the fast path (``attn.impl == "fast"``) :func:`maskdn.fastpath.swin_block` runs the block: the
    same sequence with the MLP on oneDNN and, without autograd, the whole block in groups of windows.

    Args:
        dim: Token width C.
        num_heads: Attention heads.
        window_size: Window side ws in tokens.
        shift_size: Cyclic shift in tokens (0, or ws // 2 for every second block as in SwinIR).
        mlp_ratio: MLP hidden width / C.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, size: tuple[int, int], token_keep: Tensor | None = None) -> Tensor:
        """The block on tokens ``x``: ``x + attention(x)``, then ``+ mlp(norm2(x))``.

        Args:
            x: Tokens ``[B, H·W, C]`` in row-major image order.
            size: ``(H, W)`` in tokens (multiples of ``window_size``).
            token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1) applied before the qkv projection.

        Returns:
            ``[B, H·W, C]``, ``x``'s dtype.
        """
        if self.attn.impl == "fast" and x.device.type == "cpu":
            return fastpath.swin_block(self, x, size, token_keep)
        x = x + self.attention(x, size, token_keep)
        return x + self.mlp(self.norm2(x))

    def attention(self, x: Tensor, size: tuple[int, int], token_keep: Tensor | None = None) -> Tensor:
        """The attention branch on tokens ``x`` ``[B, H·W, C]``: norm, windows, attention, back to image
        order (the residual is the caller's).

        Args:
            x: Tokens ``[B, H·W, C]`` in row-major image order.
            size: ``(H, W)`` in tokens.
            token_keep: Optional keep mask ``[B·nW, N, 1]`` (0 or 1).

        Returns:
            ``[B, H·W, C]`` in image order.
        """
        return self.attn(x, size, self.shift_size, self.norm1, token_keep)


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing a residual group: one 3x3 conv, or the lighter "3conv" bottleneck.

    SwinIR's ``resi_connection``: ``"3conv"`` is conv3x3 C→C/4, LeakyReLU(0.2), conv1x1, LeakyReLU(0.2),
    conv3x3 C/4→C.

    Args:
        dim: Channels C (a multiple of 4 for ``"3conv"``).
        kind: ``"1conv"``; anything else gives ``"3conv"``.

    Returns:
        The module, ``[B, C, H, W] → [B, C, H, W]``.
    """
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating regular and shifted windows.

    A module of its own only to keep the authors' key names: their checkpoints hold
    ``layers.N.residual_group.blocks.M...``, so :class:`RSTB` keeps the blocks under ``residual_group``
    and runs them itself.

    Args:
        dim: Token width C.
        depth: Number of blocks; odd-numbered ones (1, 3, …) shift by ``window_size // 2``.
        num_heads: Attention heads.
        window_size: Window side ws in tokens.
        mlp_ratio: MLP hidden width / C.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)
        )


class RSTB(nn.Module):
    """Residual Swin Transformer block: blocks, a conv on the image layout, and a group residual.

    Args:
        dim: Token width C.
        depth: Number of Swin blocks.
        num_heads: Attention heads.
        window_size: Window side ws in tokens.
        mlp_ratio: MLP hidden width / C.
        resi: ``"1conv"`` or ``"3conv"`` (:func:`residual_conv`).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, resi: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio)
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, size: tuple[int, int], token_keeps: list[Tensor | None]) -> Tensor:
        """``x + conv(blocks(x))`` on tokens.

        Args:
            x: Tokens ``[B, H·W, C]`` in row-major image order.
            size: ``(H, W)`` in tokens.
            token_keeps: One keep mask ``[B·nW, N, 1]`` (or None) per block, in block order.

        Returns:
            ``[B, H·W, C]``.
        """
        h = x
        for blk, keep in zip(self.residual_group.blocks, token_keeps):
            h = blk(h, size, keep)
        return image_to_tokens(self.conv(tokens_to_image(h, size))) + x


class PatchEmbed(nn.Module):
    """``[B, C, H, W] → [B, H·W, C]`` followed by LayerNorm (SwinIR's patch size is 1).

    Args:
        dim: Channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens of the image, layer-normed.

        Args:
            x: Feature map ``[B, C, H, W]``.

        Returns:
            ``[B, H·W, C]``.
        """
        return self.norm(image_to_tokens(x))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


COMPILED_VARIANTS = 64
"""Compiled variants of the Swin block that :meth:`MaskedSwinIR.compile_blocks` allows for (PyTorch's default: 8)."""


class MaskedSwinIR(nn.Module):
    """SwinIR denoiser with a 1x1 first conv, no global residual and attention token masking.

    ``forward(x)`` maps ``[B, in_chans, H, W]`` images (values in ``[0, img_range]``) of any size to
    denoised images of the same shape; it pads by reflection to a multiple of the window and crops back.
    Outputs are not clamped. ``generator`` drives the attention token mask, so a stochastic pass is
    reproducible; it must live on the input's device. SwinIR (Liang et al. 2021) as changed by Chen et
    al., CVPR 2023 (see the module docstring).

    Args:
        config: The architecture; None gives ``ModelConfig()`` (the paper's model).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        dim = config.embed_dim
        mean = RGB_MEAN if config.in_chans == 3 else (0.0,) * config.in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(config.in_chans, dim, 1, 1, 0)
        self.patch_embed = PatchEmbed(dim)
        self.layers = nn.ModuleList(
            RSTB(dim, depth, heads, config.window_size, config.mlp_ratio, config.resi_connection)
            for depth, heads in zip(config.depths, config.num_heads)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = residual_conv(dim, config.resi_connection)
        self.conv_last = nn.Conv2d(dim, config.in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def masks_attention(self) -> bool:
        """Whether the next forward pass masks attention tokens (so its output is stochastic).

        Returns:
            True when ``attn_mask_ratio > 0`` and the model is training or ``attn_mask_at_eval`` is set.
        """
        c = self.config
        return c.attn_mask_ratio > 0 and (self.training or c.attn_mask_at_eval)

    @property
    def stochastic(self) -> bool:
        """:attr:`masks_attention`, under the name of the common model interface (:mod:`maskdn.denoiser`).

        Returns:
            Whether averaging forward passes changes the result.
        """
        return self.masks_attention

    @property
    def size_multiple(self) -> int:
        """The window side: inputs are padded to a multiple of it (:mod:`maskdn.denoiser`).

        Returns:
            ``config.window_size``.
        """
        return self.config.window_size

    def set_attention(self, impl: str) -> "MaskedSwinIR":
        """Switch every window attention to ``impl`` (one of :data:`ATTENTION_IMPLS`); returns self.

        Args:
            impl: ``"fast"``, ``"reference"``, ``"sdpa"`` or ``"batched"`` (see :class:`WindowAttention`).

        Returns:
            ``self``.

        Raises:
            MaskdnError: ``"unknown attention path '...' (valid: fast, reference, sdpa, batched)"``.
        """
        if impl not in ATTENTION_IMPLS:
            raise MaskdnError(f"unknown attention path {impl!r} (valid: {', '.join(ATTENTION_IMPLS)})")
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.impl = impl
        return self

    def compile_blocks(self, **options) -> "MaskedSwinIR":
        """``torch.compile`` every Swin block in place (regional compilation); returns self.

        The blocks share their code, so the compiler traces one block per distinct shift, mask and
        shape and reuses the result for every other block: compiling costs a few blocks' worth, not the
        whole network's (24 blocks of the paper preset, two graphs), and the parameter names
        (``state_dict``) stay unchanged. Meant for the
        ``batched`` path (the default off CPU); the CPU fast path's data-dependent steps would break its
        graphs. Calls ``nn.Module.compile`` on each :class:`SwinTransformerBlock`, as PyTorch's regional
        compilation recipe does; the convolutions between groups run eagerly.

        Shapes are static (``dynamic=False`` unless given): each new input shape or shift gets a graph of
        its own. PyTorch's default would, on the second shape seen, recompile every block with symbolic
        sizes ("automatic dynamic shapes") and keep using those graphs, so a validation pass or a
        forward at another size would move training onto generic kernels for good. All blocks'
        variants (shift, mask, train/eval, dtype, shape) count against one code object's
        recompilation limit, so this raises ``torch._dynamo.config.recompile_limit`` to at least
        :data:`COMPILED_VARIANTS` (past the limit PyTorch silently runs the block eagerly).

        Args:
            **options: Passed to ``torch.compile`` (e.g. ``mode``, ``dynamic``, ``backend``).

        Returns:
            ``self``.
        """
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older PyTorch
        setattr(config, name, max(getattr(config, name), COMPILED_VARIANTS))
        options.setdefault("dynamic", False)
        for m in self.modules():
            if isinstance(m, SwinTransformerBlock):
                m.compile(**options)
        return self

    def _token_keeps(self, B: int, H: int, W: int, x: Tensor, generator: torch.Generator | None) -> list[Tensor | None]:
        """One keep mask ``[B·nW, N, 1]`` per block (None when masking is off), drawn on ``x``'s device."""
        n_blocks = sum(self.config.depths)
        if not self.masks_attention:
            return [None] * n_blocks
        ws = self.config.window_size
        n_tokens = B * H * W
        keep = token_keep_mask(
            (n_blocks, n_tokens // (ws * ws), ws * ws, 1), self.config.attn_mask_ratio, x, generator
        )
        return list(keep.unbind(0))

    def forward_features(
        self, x: Tensor, generator: torch.Generator | None = None, collect: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Body of the network on a padded, normalised input; optionally collects named features.

        Returns ``(image, features)``: the output before de-normalisation and, when ``collect``, a dict
        of ``[B, C, H, W]`` maps: ``embed`` (after the first conv), ``group{i}`` (after each residual
        group) and ``body`` (input to the last conv).

        Args:
            x: Normalised input ``[B, in_chans, H, W]``, H and W multiples of ``window_size``.
            generator: Optional ``torch.Generator`` on ``x``'s device for the attention token masks.
            collect: Also return the named features.

        Returns:
            ``(image, features)``: ``image`` ``[B, in_chans, H, W]`` (contiguous) and ``features``
            ``{name: [B, embed_dim, H, W]}`` (empty unless ``collect``).
        """
        B, _, H, W = x.shape
        feats: dict[str, Tensor] = {}
        x_first = self.conv_first(x.contiguous(memory_format=torch.channels_last))
        if collect:
            feats["embed"] = x_first
        keeps = self._token_keeps(B, H, W, x, generator)
        h = self.patch_embed(x_first)
        start = 0
        for i, layer in enumerate(self.layers):
            depth = len(layer.residual_group.blocks)
            h = layer(h, (H, W), keeps[start : start + depth])
            start += depth
            if collect:
                feats[f"group{i}"] = tokens_to_image(h, (H, W))
        h = tokens_to_image(self.norm(h), (H, W))
        res = self.conv_after_body(h)  # no long skip from x_first: the authors removed it with the global residual
        if collect:
            feats["body"] = res
        # contiguous: callers get a plain image (3 channels, a small copy)
        return self.conv_last(res).contiguous(), {k: v.contiguous() for k, v in feats.items()}

    def feature_names(self) -> list[str]:
        """Names accepted by :meth:`forward_intermediates`, in network order.

        Returns:
            ``["embed", "group0", …, "body"]``.
        """
        return ["embed", *(f"group{i}" for i in range(len(self.layers))), "body"]

    def _normalise(self, x: Tensor) -> tuple[Tensor, int, int]:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise MaskdnError(f"expected input [B, {self.config.in_chans}, H, W], got {list(x.shape)}")
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, self.config.window_size)
        return (x - self.mean.to(x.dtype)) * self.config.img_range, H, W

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoise ``x``: normalise, pad, body, de-normalise, crop.

        Args:
            x: Images ``[B, in_chans, H, W]``, float, values in ``[0, img_range]``, any H and W.
            generator: Optional ``torch.Generator`` on ``x``'s device for the attention token masks.

        Returns:
            ``[B, in_chans, H, W]``, ``x``'s dtype, not clamped.

        Raises:
            MaskdnError: ``"expected input [B, in_chans, H, W], got [...]"``.
        """
        x, H, W = self._normalise(x)
        out, _ = self.forward_features(x, generator)
        return (out / self.config.img_range + self.mean.to(out.dtype))[..., :H, :W]

    def forward_intermediates(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Output image (key ``output``) and the named features of :meth:`forward_features`, cropped.

        Args:
            x: Images ``[B, in_chans, H, W]``, values in ``[0, img_range]``.
            generator: Optional ``torch.Generator`` on ``x``'s device for the attention token masks.

        Returns:
            ``{"embed", "group{i}", "body": [B, embed_dim, H, W], "output": [B, in_chans, H, W]}``.

        Raises:
            MaskdnError: ``"expected input [B, in_chans, H, W], got [...]"``.
        """
        xn, H, W = self._normalise(x)
        out, feats = self.forward_features(xn, generator, collect=True)
        feats = {k: v[..., :H, :W] for k, v in feats.items()}
        feats["output"] = (out / self.config.img_range + self.mean.to(out.dtype))[..., :H, :W]
        return feats


# --------------------------------------------------------------------------------------------------
# Foreign checkpoints
# --------------------------------------------------------------------------------------------------

DERIVED_BUFFERS = ("attn_mask", "relative_position_index")
"""Buffers that the authors' ``state_dict()`` carries but that are recomputed here."""


def checkpoint_filter_fn(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt a checkpoint from the authors' code (or a wrapped one) to :class:`MaskedSwinIR` keys.

    Unwraps ``params_ema`` / ``params`` / ``state_dict`` / ``model`` nesting (EMA first, as released),
    strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes and drops derived buffers.

    Args:
        state_dict: A loaded checkpoint dict.

    Returns:
        A new ``{key: tensor}`` dict (tensors not copied) without :data:`DERIVED_BUFFERS`.
    """
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        if k.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            continue
        out[k] = v
    return out


def infer_config(state_dict: dict[str, Tensor], **overrides) -> ModelConfig:
    """Read the architecture off a filtered state dict (masking fields come from ``overrides``).

    Args:
        state_dict: Output of :func:`checkpoint_filter_fn`.
        **overrides: :class:`ModelConfig` fields to set (e.g. ``attn_mask_ratio``).

    Returns:
        The :class:`ModelConfig`.

    Raises:
        MaskdnError: ``"conv_first is kxk: a standard SwinIR checkpoint, not a masked-training one ..."``,
            ``"not a SwinIR state dict (missing ...)"``, or an invalid config.
    """
    try:
        w_first = state_dict["conv_first.weight"]
        if w_first.shape[-1] != 1:
            raise MaskdnError(
                f"conv_first is {w_first.shape[-1]}x{w_first.shape[-1]}: a standard SwinIR checkpoint, "
                "not a masked-training one (which has a 1x1 first conv)"
            )
        embed_dim, in_chans = int(w_first.shape[0]), int(w_first.shape[1])
        depths, heads, i = [], [], 0
        while f"layers.{i}.residual_group.blocks.0.norm1.weight" in state_dict:
            j = 0
            while f"layers.{i}.residual_group.blocks.{j}.norm1.weight" in state_dict:
                j += 1
            table = state_dict[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"]
            depths.append(j)
            heads.append(int(table.shape[1]))
            i += 1
        window = (int(round(table.shape[0] ** 0.5)) + 1) // 2
        hidden = state_dict["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
        resi = "3conv" if "conv_after_body.4.weight" in state_dict else "1conv"
    except (KeyError, IndexError, UnboundLocalError) as e:
        raise MaskdnError(f"not a SwinIR state dict (missing {e})") from None
    fields = dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(heads),
        window_size=window, mlp_ratio=hidden / embed_dim, resi_connection=resi,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

PRESETS: dict[str, ModelConfig] = {
    # The paper's model: 824,118 parameters.
    "paper": ModelConfig(),
    # CPU-trainable width and depth: 90,835 parameters.
    "small": ModelConfig(embed_dim=32, depths=(4, 4), num_heads=(4, 4)),
    # The conformance "tiny" model (31,023 parameters): tests and smoke runs.
    "tiny": ModelConfig(embed_dim=24, depths=(2, 2), num_heads=(3, 3)),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset config, with ``dataclasses.replace`` overrides (e.g. ``attn_mask_ratio=0``).

    Args:
        name: A key of :data:`PRESETS` (``"paper"``, ``"small"``, ``"tiny"``).
        **overrides: :class:`ModelConfig` fields to replace.

    Returns:
        The :class:`ModelConfig`.

    Raises:
        MaskdnError: ``"unknown preset '...' (valid: paper, small, tiny)"``, or an invalid config.
    """
    if name not in PRESETS:
        raise MaskdnError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name], **overrides)
