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
never read from a file. File layout, bottom-up: helpers, attention, block, residual group, model,
checkpoint filter, presets.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MaskdnError
from .kernels import kept_attention, kernel_available
from .linear import linear, linear_gelu
from .masking import token_keep_mask

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
    paper does for train/test consistency; test outputs are then stochastic.
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
        if self.window_size < 1 or self.in_chans < 1 or self.embed_dim < 1:
            problems.append("window_size, in_chans and embed_dim must be positive")
        if problems:
            raise MaskdnError("invalid ModelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MaskdnError(f"unknown ModelConfig field(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Helpers: window partition and reverse, relative-position index, shift mask
# --------------------------------------------------------------------------------------------------


def window_partition(x: Tensor, ws: int) -> Tensor:
    """``[B, H, W, C] → [B·nW, ws·ws, C]`` with windows in row-major order (H, W multiples of ws)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: Tensor, ws: int, H: int, W: int) -> Tensor:
    """``[B·nW, ws·ws, C] → [B, H, W, C]``; inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


@functools.lru_cache(maxsize=8)
def relative_position_index(ws: int) -> Tensor:
    """``[ws², ws²]`` index into the ``(2ws−1)²`` relative-position bias table (row-major offsets)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_attention_mask(H: int, W: int, ws: int, shift: int) -> Tensor:
    """``[nW, ws², ws²]`` additive mask (0 or −100) for shifted windows of an ``H×W`` map.

    After the cyclic shift, a window at the border holds pixels from up to four image regions that are
    not neighbours; tokens from different regions must not attend to each other. The reference path
    computes it on every call, as the authors' code does; the fast path keeps a :class:`WindowLayout`.
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


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """Everything the fast path derives from ``(H, W, window, shift)``, computed once and cached.

    ``order`` gathers the tokens ``[B, H·W, C]`` straight into shifted windows (the cyclic roll and the
    window partition as one copy) and ``inverse`` scatters them back. The shift mask takes only a few
    distinct values per window: ``kind`` ``[nW]`` indexes them in ``kind_mask`` ``[n_kinds, N, N]``
    (interior, right column, bottom row, corner; one all-zero kind without a shift), and
    ``border_kind`` ``[n_kinds]`` says which kinds are not all zero (the last window row and column).
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
        the shift mask and their masks ``[n, N, N]``; None without a shift."""
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


def reflect_pad(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Reflection-pad ``[..., H, W]`` by ``pad_h`` rows at the bottom and ``pad_w`` columns at the right.

    One reflection cannot exceed the size minus one, so small images are reflected in several steps;
    a side of a single pixel is replicated.
    """
    while pad_h > 0 or pad_w > 0:
        step_h, step_w = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
        if step_h <= 0 and step_w <= 0:
            batch = x.reshape(-1, *x.shape[-3:]) if x.ndim >= 3 else x[None]
            out = F.pad(batch.float(), (0, pad_w, 0, pad_h), mode="replicate").to(x.dtype)
            return out.reshape(*x.shape[:-2], *out.shape[-2:])
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflection-pad ``[B, C, H, W]`` at the bottom/right up to a multiple of ``multiple``."""
    H, W = x.shape[-2:]
    return reflect_pad(x, (-H) % multiple, (-W) % multiple)


# --------------------------------------------------------------------------------------------------
# Attention, MLP, block, residual group
# --------------------------------------------------------------------------------------------------


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index`` of the rows of ``x``, with ``inverse`` its inverse.

    The backward gathers with the inverse; ``index_select``'s own backward scatters with accumulation,
    several times slower on CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _GatherRows(torch.autograd.Function):
    """``x[rows]`` for distinct ``rows``: the backward copies the gradient rows back into zeros instead of
    accumulating them (``index_select``'s own backward), which distinct rows make unnecessary."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, *grad.shape[1:]).index_copy_(0, rows, grad), None


class _PlaceQueries(torch.autograd.Function):
    """Queries ``[heads·b, d, N]`` of ``b`` windows (keys × queries layout) from the queries ``q``
    ``[b, K, heads·d]`` of their kept tokens at window positions ``positions`` ``[b, K]`` (distinct per
    window); every other position holds ``fill`` ``[heads·d]``, the query of a masked token (the qkv
    bias)."""

    @staticmethod
    def forward(ctx, q: Tensor, positions: Tensor, fill: Tensor, heads: int, N: int) -> Tensor:
        b, K, C = q.shape
        d = C // heads
        index = positions.view(1, b, 1, K).expand(heads, b, d, K)
        out = fill.to(q.dtype).view(heads, 1, d, 1).expand(heads, b, d, N).contiguous()
        out.scatter_(3, index, q.view(b, K, heads, d).permute(2, 0, 3, 1))
        ctx.save_for_backward(index)
        ctx.fill_dtype = fill.dtype
        return out.view(heads * b, d, N)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        heads, b, d, K = index.shape
        grad = grad.view(heads, b, d, -1)
        d_placed = grad.gather(3, index)  # [heads, b, d, K]
        d_fill = grad.sum((1, 3)) - d_placed.sum((1, 3))
        d_q = d_placed.permute(1, 3, 0, 2).reshape(b, K, heads * d)
        return d_q, None, d_fill.reshape(-1).to(ctx.fill_dtype), None, None


class _KeysByQueries(torch.autograd.Function):
    """The attention core ``values · softmax_keys(keys · q · scale + logits)``, laid out keys × queries.

    ``qT`` ``[b, d, N]``, ``keys`` ``[b, K, d]``, ``valuesT`` ``[b, d, K]``, ``logits`` ``[b, K, N]`` →
    ``[b, d, N]``. Every batched matmul here, backward included, has the 64 queries as its output rows'
    length: with few keys and head dims of 8–10, the other layouts run 2–3x slower on CPU, and so does a
    softmax over a short last dimension. Computes in the dtype of ``qT`` (bf16 under autocast).
    """

    @staticmethod
    def forward(ctx, qT: Tensor, keys: Tensor, valuesT: Tensor, logits: Tensor, scale: float) -> Tensor:
        ctx.dtypes, ctx.scale = [t.dtype for t in (qT, keys, valuesT, logits)], scale
        dtype = qT.dtype
        with torch.autocast(qT.device.type, enabled=False):
            keys, valuesT = keys.to(dtype), valuesT.to(dtype)
            p = torch.baddbmm(logits.to(dtype), keys, qT, alpha=scale).softmax(1)
            out = torch.bmm(valuesT, p)
        ctx.save_for_backward(qT, keys, valuesT, p, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        qT, keys, valuesT, p, out = ctx.saved_tensors
        grad = grad.to(p.dtype).contiguous()
        dp = torch.bmm(valuesT.transpose(1, 2), grad)
        d_valuesT = torch.bmm(grad, p.transpose(1, 2))
        d_logits = dp.sub_((out * grad).sum(1, keepdim=True)).mul_(p)  # softmax backward: Σ_k p·dp = Σ_d out·grad
        d_qT = torch.bmm(keys.transpose(1, 2), d_logits).mul_(ctx.scale)
        d_keys = torch.bmm(qT, d_logits.transpose(1, 2)).mul_(ctx.scale).transpose(1, 2)
        grads = (d_qT, d_keys, d_valuesT, d_logits)
        return (*(g.to(t) for g, t in zip(grads, ctx.dtypes)), None)


ATTENTION_IMPLS = ("fast", "reference", "sdpa")
"""Interchangeable attention paths; all compute the same function (tests hold them to 1e-4)."""


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Tokens ``[B·nW, N, C]`` (``N = ws²``); ``token_keep`` ``[B·nW, N, 1]`` (0 or 1) zeroes masked tokens
    before the qkv projection. Three paths, chosen by ``impl``:

    * ``reference``: the literal computation of the authors' code (scale, matmul, add the bias, add the
      shift mask, softmax, matmul, each a separate pass); the yardstick for tests and benchmarks;
    * ``fast`` (default): with a token mask, attention over the kept keys (:meth:`kept_keys`); without
      one, a contiguous ``[3, heads, B·nW, N, d]`` qkv, the shift mask added to the border windows only
      and, without autograd, one head at a time with the bias folded into the score matmul
      (``baddbmm``) and an in-place softmax in one reused buffer (the block passes cache-sized groups of
      windows);
    * ``sdpa``: ``scaled_dot_product_attention`` with bias and shift mask as one float mask (on CPU it
      falls back to the math kernel; on GPU it can use a fused one).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size).clone(), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.impl = "fast"

    def relative_position_bias(self) -> Tensor:
        """``[heads, N, N]`` bias gathered from the table."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, -1).permute(2, 0, 1)

    def reference(self, x: Tensor, shift_mask: Tensor | None = None, token_keep: Tensor | None = None) -> Tensor:
        """The literal path; ``shift_mask`` ``[nW, N, N]`` covers every window."""
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
        """``scaled_dot_product_attention`` with the bias (and shift mask) as its float mask."""
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

    def fast(self, x: Tensor, layout: WindowLayout, offset: int = 0) -> Tensor:
        """The default path without a token mask; ``layout`` says which windows need the shift mask, ``x``
        holding the windows from number ``offset`` on."""
        B_, N, C = x.shape
        heads, d = self.num_heads, C // self.num_heads
        qkv = linear(x, self.qkv.weight, self.qkv.bias)
        # [3·heads, B_·N, d]: one plain 3-D transpose copy (a 5-D permute copies far slower)
        qkv = qkv.view(B_ * N, 3 * heads, d).transpose(0, 1).contiguous().view(3, heads, B_, N, d)
        bias = self.relative_position_bias().to(qkv.dtype)
        if torch.is_grad_enabled():  # all heads at once: per-head slices would each back-propagate a full zero qkv
            q, k, v = qkv.unbind(0)  # each [heads, B_, N, d]
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn.add_(bias.unsqueeze(1))  # in place is safe: matmul's backward does not need its output
            border = layout.border(offset, B_)
            if border is not None:
                hit, masks = border
                attn.index_add_(1, hit, masks.to(attn.dtype).unsqueeze(0).expand(heads, -1, -1, -1))
            out = attn.softmax(-1) @ v
        else:  # one score buffer reused by every head (fresh pages fault), softmax in place
            out = torch.empty(heads, B_, N, d, dtype=qkv.dtype, device=x.device)
            buffer = torch.empty(B_, N, N, dtype=qkv.dtype, device=x.device)
            border = layout.border(offset, B_)
            for i in range(heads):
                attn = torch.baddbmm(bias[i].expand(B_, -1, -1), qkv[0, i], qkv[1, i].transpose(1, 2),
                                     alpha=self.scale, out=buffer)
                if border is not None:
                    attn.index_add_(0, border[0], border[1].to(attn.dtype))
                torch.bmm(torch.softmax(attn, dim=-1, out=attn), qkv[2, i], out=out[i])
        out = out.view(heads, B_ * N, d).transpose(0, 1).reshape(B_, N, C)
        return linear(out, self.proj.weight, self.proj.bias)

    def kept_keys(self, tokens: Tensor, windows: Tensor, keep: Tensor, kind: Tensor, tables: KeyTables,
                  norm: nn.Module | None = None, cuts: tuple[float, ...] = ()) -> Tensor:
        """The fast path with a token mask: windows of ``tokens`` ``[M, C]``, window ``w`` being the rows
        ``windows[w]`` (``[n, N]``, distinct rows, windows sorted by kept count, see
        :func:`windows_by_kept_count`), kept tokens ``keep`` ``[n, N]`` (bool), window ``kind`` ``[n]`` and
        :meth:`key_tables` as in :class:`WindowLayout`; ``norm`` (the block's pre-norm) is applied here, to
        the kept tokens only. Returns ``[n, N, C]`` after the output projection.

        A masked token is zeroed before the qkv projection, so its query, key and value are the qkv bias
        ``b_q, b_k, b_v``: only kept tokens are gathered, normed and projected. Every masked key of a
        window is then the same vector ``b_k`` with value ``b_v``; only its relative-position bias
        differs, so the masked keys fold into one key whose logit is ``q·b_k·scale + log Σ_masked
        exp(bias)``, and a window attends to its ~16 kept keys plus that one instead of 64, padded to the
        largest count among the windows attended together. ``cuts`` (fractions of ``n``) split the sorted
        windows into groups attended separately, each padded to its own largest count.
        """
        n = windows.shape[0]
        bounds = sorted({0, n, *(round(c * n) for c in cuts)})
        n_kept = keep.sum(1)
        order = torch.argsort(keep.to(torch.uint8), dim=1, descending=True, stable=True)  # kept first
        groups, rows, valid = [], [], []
        for a, b in itertools.pairwise(bounds):
            K = int(n_kept[a:b].max())
            groups.append((b - a, K))
            rows.append(windows[a:b].gather(1, order[a:b, :K]).reshape(-1))
            valid.append(torch.arange(K, device=keep.device) < n_kept[a:b, None])
        kept = _GatherRows.apply(tokens, torch.cat(rows))  # one gather for all groups: one backward copy
        if norm is not None:
            kept = norm(kept)
        # a group's padding rows are masked tokens: zeroed, they project to the bias like any masked token
        qkv = linear(kept * torch.cat([v.reshape(-1, 1) for v in valid]).to(kept.dtype), self.qkv.weight, self.qkv.bias)
        out = []
        for (count, K), part, a, v in zip(groups, qkv.split([c * K for c, K in groups]), bounds, valid):
            sl = slice(a, a + count)
            out.append(self._attend_kept(part.view(count, K, part.shape[-1]), order[sl, :K], v, keep[sl], kind[sl], tables))
        return linear(out[0] if len(out) == 1 else torch.cat(out), self.proj.weight, self.proj.bias)

    def key_tables(self, kind_mask: Tensor) -> KeyTables:
        """Position-bias tables of :meth:`kept_keys` for windows whose shift masks are ``kind_mask``
        ``[n_kinds, N, N]``, computed once per block (float32, outside autocast)."""
        with torch.autocast(kind_mask.device.type, enabled=False):
            bias = self.relative_position_bias().float().unsqueeze(1) + kind_mask  # [heads, kinds, N q, N k]
            top = bias.detach().amax(-1, keepdim=True)
            weights = (bias - top).exp() * (kind_mask == 0)  # the fold: keys of the query's own region only
            return KeyTables(bias.transpose(2, 3).flatten(1, 2), weights.flatten(0, 2), top.squeeze(-1))

    def _attend_kept(self, qkv: Tensor, order: Tensor, valid: Tensor, keep: Tensor, kind: Tensor,
                     tables: KeyTables) -> Tensor:
        """Attention of ``b`` windows from the projected kept tokens ``qkv`` ``[b, K, 3C]`` at window
        positions ``order`` ``[b, K]`` (``valid`` ``[b, K]``: not padding), before the output projection:
        ``[b, N, C]``."""
        b, K, C3 = qkv.shape
        C, N = C3 // 3, keep.shape[1]
        heads, d = self.num_heads, C // self.num_heads
        bias = self.qkv.bias
        table, rows = self._kept_key_table(~keep, order, valid, kind, tables)
        if kernel_available(qkv):  # the same computation in one fused pass (maskdn.kernels)
            return kept_attention(qkv, order, bias, table, rows, heads, self.scale)
        logits = table.index_select(1, rows.view(-1)).view(heads * b, K + 1, N)
        kv = qkv[..., C:].view(b, K, 2, heads, d)
        kv = torch.cat([kv, bias[C:].to(kv.dtype).view(1, 1, 2, heads, d).expand(b, 1, -1, -1, -1)], 1)
        keys = kv[:, :, 0].permute(2, 0, 1, 3).reshape(heads * b, K + 1, d)
        valuesT = kv[:, :, 1].permute(2, 0, 3, 1).reshape(heads * b, d, K + 1)
        qT = _PlaceQueries.apply(qkv[..., :C], order, bias[:C], heads, N)
        out = _KeysByQueries.apply(qT, keys, valuesT, logits, self.scale)
        return out.view(heads, b, d, N).permute(1, 3, 0, 2).reshape(b, N, C)

    @staticmethod
    def _kept_key_table(masked: Tensor, order: Tensor, valid: Tensor, kind: Tensor,
                        tables: KeyTables) -> tuple[Tensor, Tensor]:
        """The position bias of every key of ``b`` windows for every query: key ``k`` of window ``w``
        has row ``rows[w, k]`` of ``table`` ``[heads, R, N]`` (``rows`` ``[b, K+1]``): the kept keys' rows
        (−inf for padding), then the folded masked key's. The tables carry the shift mask, so a kept key
        of another region gets its −100, as in the reference; the fold sums the masked keys of the
        query's own region only (the reference weighs the others by e^−100, below float precision)."""
        b = order.shape[0]
        heads, rows_per_head, N = tables.rows.shape
        n_kinds = rows_per_head // N
        with torch.autocast(masked.device.type, enabled=False):
            total = (tables.weights @ masked.float().t()).view(heads, n_kinds, N, b)
            total = total.gather(1, kind.view(1, 1, 1, b).expand(heads, 1, N, b)).squeeze(1)  # [heads, N, b]
            # no masked key for that query (its region): −inf, not log(0) (whose gradient is inf·0)
            folded = torch.where(total > 0, total.clamp_min(1e-30).log(), float("-inf")).transpose(1, 2)
            folded = folded + tables.top[:, kind]  # [heads, b, N]
            padding = folded.new_full((heads, 1, N), float("-inf"))
            table = torch.cat([tables.rows, folded, padding], 1)  # rows: one key's bias for every query
            rows = torch.where(valid, order + N * kind[:, None], rows_per_head + b)
            rows = torch.cat([rows, rows_per_head + torch.arange(b, device=rows.device)[:, None]], 1)
        return table, rows


@dataclass(frozen=True, eq=False)
class KeyTables:
    """Per-block tables of :meth:`WindowAttention.kept_keys`: ``rows`` ``[heads, kinds·N, N]`` (the bias,
    shift mask included, of key ``j`` for every query, kind-major), ``weights`` ``[heads·kinds·N, N]``
    (``exp(bias − top)``) and ``top`` ``[heads, kinds, N]`` (each query's largest bias)."""

    rows: Tensor
    weights: Tensor
    top: Tensor


class Mlp(nn.Module):
    """Two linear layers with GELU: ``[..., C] → [..., C]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def fast(self, x: Tensor) -> Tensor:
        """:meth:`forward` on oneDNN's float32 matmul where it applies (:mod:`maskdn.linear`)."""
        return linear(linear_gelu(x, self.fc1.weight, self.fc1.bias), self.fc2.weight, self.fc2.bias)


@dataclass(frozen=True, eq=False)
class KeptOrder:
    """Windows of a batch sorted by their number of kept tokens, for :meth:`WindowAttention.kept_keys`.

    ``rows`` ``[n·N]`` gathers tokens ``[B·H·W, C]`` straight into the sorted windows (shift and
    partition included), ``inverse`` scatters them back; ``keep`` ``[n, N]`` (bool) and ``kind`` ``[n]``
    (see :class:`WindowLayout`) follow the sorted order. Sorting lets windows with similar counts be
    attended together, each group padded only to its own largest count.
    """

    rows: Tensor
    inverse: Tensor
    keep: Tensor
    kind: Tensor


def windows_by_kept_count(layout: WindowLayout, batch: int, token_keep: Tensor) -> KeptOrder:
    """The :class:`KeptOrder` of ``batch`` images laid out by ``layout`` under ``token_keep`` ``[n, N, 1]``."""
    n_windows, N = token_keep.shape[0], token_keep.shape[1]
    keep = token_keep.reshape(n_windows, N) > 0
    by_count = torch.argsort(keep.sum(1), stable=True)
    L = layout.order.numel()
    image_start = L * torch.arange(batch, device=keep.device).view(batch, 1, 1)
    rows = (layout.order.view(1, -1, N) + image_start).view(n_windows, N)[by_count].view(-1)
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(rows.numel(), device=rows.device)
    return KeptOrder(rows, inverse, keep[by_count], layout.kind[by_count % layout.n_windows])


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted) window attention and MLP, each with a residual; tokens ``[B, H·W, C]``."""

    WINDOW_GROUP = 64
    """Windows carried through a whole block at once without autograd: their activations stay in cache."""

    KEPT_KEY_CUTS = (0.25, 0.5, 0.75, 0.95)
    """With autograd and a token mask, the windows sorted by kept count are attended in groups cut at
    these fractions, each padded to its own largest count (the last 5% holds the long tail): at the
    training shape (1024 windows, 75% masked) 1.7 padding keys per window on average, against 2.8 for
    four equal groups and 11.5 for one."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, size: tuple[int, int], token_keep: Tensor | None = None) -> Tensor:
        if self.attn.impl == "fast" and not torch.is_grad_enabled():
            layout = window_layout(*size, self.window_size, self.shift_size, x.device)
            return self._forward_in_window_groups(x, layout, token_keep)
        x = x + self.attention(x, size, token_keep)
        mlp = self.mlp.fast if self.attn.impl == "fast" else self.mlp
        return x + mlp(self.norm2(x))

    def attention(self, x: Tensor, size: tuple[int, int], token_keep: Tensor | None = None) -> Tensor:
        """The attention branch on tokens ``x`` ``[B, H·W, C]``: norm, windows, attention, back to image
        order (the residual is the caller's)."""
        H, W = size
        B, L, C = x.shape
        ws, shift = self.window_size, self.shift_size
        if self.attn.impl == "fast":
            layout = window_layout(H, W, ws, shift, x.device)
            if token_keep is None:
                windows = self.norm1(x).index_select(1, layout.order).view(-1, ws * ws, C)
                return self.attn.fast(windows, layout).view(B, L, C).index_select(1, layout.inverse)
            order = windows_by_kept_count(layout, B, token_keep)
            tables = self.attn.key_tables(layout.kind_mask)
            h = self.attn.kept_keys(x.reshape(B * L, C), order.rows.view(-1, ws * ws), order.keep, order.kind,
                                    tables, self.norm1, self.KEPT_KEY_CUTS)
            return _PermuteRows.apply(h.view(B * L, C), order.inverse, order.rows).view(B, L, C)
        # the literal sequence: roll, partition, attend, reverse, roll back
        h = self.norm1(x).view(B, H, W, C)
        shift_mask = None
        if shift:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
            shift_mask = shift_attention_mask(H, W, ws, shift).to(device=x.device, dtype=x.dtype)
        attend = self.attn.reference if self.attn.impl == "reference" else self.attn.sdpa
        h = window_reverse(attend(window_partition(h, ws), shift_mask, token_keep), ws, H, W)
        if shift:
            h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
        return h.reshape(B, L, C)

    def _forward_in_window_groups(self, x: Tensor, layout: WindowLayout, token_keep: Tensor | None) -> Tensor:
        """The fast path without autograd: the whole block in window order, a group of windows at a time.

        Norms, MLP and residuals act per token and attention per window, so the block commutes with the
        gather into windows; one gather in, one out, and each group's activations stay in cache.
        """
        B, L, C = x.shape
        N, G = self.window_size**2, self.WINDOW_GROUP
        if token_keep is None:
            xw = x.index_select(1, layout.order).view(-1, N, C)  # a copy: updated in place
        else:  # windows sorted by kept count, so a group's windows pad to similar counts
            order = windows_by_kept_count(layout, B, token_keep)
            tables = self.attn.key_tables(layout.kind_mask)
            xw = x.reshape(B * L, C).index_select(0, order.rows).view(-1, N, C)
            local_rows = torch.arange(G * N, device=x.device).view(G, N)  # a group's windows in its rows
        for s in range(0, xw.shape[0], G):
            g = xw[s : s + G]
            if token_keep is None:
                g += self.attn.fast(self.norm1(g), layout, offset=s)
            else:
                g += self.attn.kept_keys(g.view(-1, C), local_rows[: g.shape[0]], order.keep[s : s + G],
                                         order.kind[s : s + G], tables, self.norm1)
            g += self.mlp.fast(self.norm2(g))
        if token_keep is None:
            return xw.view(B, L, C).index_select(1, layout.inverse)
        return xw.view(B * L, C).index_select(0, order.inverse).view(B, L, C)


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing a residual group: one 3x3 conv, or the lighter "3conv" bottleneck."""
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
    """A stack of Swin blocks alternating regular and shifted windows."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)
        )


class RSTB(nn.Module):
    """Residual Swin Transformer block: blocks, a conv on the image layout, and a group residual."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, resi: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio)
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, size: tuple[int, int], token_keeps: list[Tensor | None]) -> Tensor:
        h = x
        for blk, keep in zip(self.residual_group.blocks, token_keeps):
            h = blk(h, size, keep)
        return image_to_tokens(self.conv(tokens_to_image(h, size))) + x


def tokens_to_image(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """Tokens ``[B, H·W, C]`` as an image ``[B, C, H, W]`` without a copy: a channels-last view, which
    convolutions take as is (a transpose to contiguous NCHW costs more than a 3x3 conv's arithmetic)."""
    B, _, C = tokens.shape
    return tokens.reshape(B, *size, C).permute(0, 3, 1, 2)


def image_to_tokens(image: Tensor) -> Tensor:
    """An image ``[B, C, H, W]`` as tokens ``[B, H·W, C]``; a view when the image is channels-last."""
    return image.permute(0, 2, 3, 1).flatten(1, 2)


class PatchEmbed(nn.Module):
    """``[B, C, H, W] → [B, H·W, C]`` followed by LayerNorm (SwinIR's patch size is 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(image_to_tokens(x))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class MaskedSwinIR(nn.Module):
    """SwinIR denoiser with a 1x1 first conv, no global residual and attention token masking.

    ``forward(x)`` maps ``[B, in_chans, H, W]`` images (values in ``[0, img_range]``) of any size to
    denoised images of the same shape; it pads by reflection to a multiple of the window and crops back.
    Outputs are not clamped. ``generator`` drives the attention token mask, so a stochastic pass is
    reproducible; it must live on the input's device.
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
        """Whether the next forward pass masks attention tokens (so its output is stochastic)."""
        c = self.config
        return c.attn_mask_ratio > 0 and (self.training or c.attn_mask_at_eval)

    def set_attention(self, impl: str) -> "MaskedSwinIR":
        """Switch every window attention to ``impl`` (one of :data:`ATTENTION_IMPLS`); returns self."""
        if impl not in ATTENTION_IMPLS:
            raise MaskdnError(f"unknown attention path {impl!r} (valid: {', '.join(ATTENTION_IMPLS)})")
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.impl = impl
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
        """Names accepted by :meth:`forward_intermediates`, in network order."""
        return ["embed", *(f"group{i}" for i in range(len(self.layers))), "body"]

    def _normalise(self, x: Tensor) -> tuple[Tensor, int, int]:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise MaskdnError(f"expected input [B, {self.config.in_chans}, H, W], got {list(x.shape)}")
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, self.config.window_size)
        return (x - self.mean.to(x.dtype)) * self.config.img_range, H, W

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x, H, W = self._normalise(x)
        out, _ = self.forward_features(x, generator)
        return (out / self.config.img_range + self.mean.to(out.dtype))[..., :H, :W]

    def forward_intermediates(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Output image (key ``output``) and the named features of :meth:`forward_features`, cropped."""
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
    """Read the architecture off a filtered state dict (masking fields come from ``overrides``)."""
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
    """The named preset config, with ``dataclasses.replace`` overrides (e.g. ``attn_mask_ratio=0``)."""
    if name not in PRESETS:
        raise MaskdnError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name], **overrides)
