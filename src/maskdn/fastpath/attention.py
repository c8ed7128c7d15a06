"""The fast path's window attention: autograd functions and the kept-keys core.

Functions here take the attention module as their first argument, ``attn``: a
:class:`maskdn.model.WindowAttention`, of which they read ``qkv``, ``proj``, ``num_heads``, ``scale``,
``window_size`` and ``relative_position_bias()`` (this package never imports :mod:`maskdn.model`).

* :func:`attend_windows`: windows without a token mask: a contiguous ``[3, heads, B·nW, N, d]`` qkv,
  the shift mask added to the border windows only and, without autograd, one head at a time with the
  bias folded into the score matmul (``baddbmm``), an in-place softmax in one reused buffer and the
  value product computed transposed;
* :func:`kept_keys`: windows with a token mask: attention over the kept keys plus one folded masked
  key, in the fused C kernel (:mod:`maskdn.fastpath.kernels`) where it applies, else in PyTorch ops
  laid out keys × queries (:class:`_PlaceQueries`, :class:`_KeysByQueries`).

Why each layout was chosen, with timings: see ``docs/performance.md``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..windows import WindowLayout
from .kernels import kept_attention, kernel_available
from .linear import linear

__all__ = ["KeptOrder", "KeyTables", "attend_windows", "kept_keys", "key_tables", "windows_by_kept_count"]


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index`` of the rows of ``x``, with ``inverse`` its inverse.

    The backward gathers with the inverse; ``index_select``'s own backward scatters with accumulation,
    slower on CPU (see docs/performance.md).
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
    length: with few keys and head dims of 8–10, the other layouts run slower on CPU, and so does a
    softmax over a short last dimension (see docs/performance.md). Computes in the dtype of ``qT``
    (bf16 under autocast).
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


@dataclass(frozen=True, eq=False)
class KeyTables:
    """Per-block tables of :func:`kept_keys`: ``rows`` ``[heads, kinds·N, N]`` (the bias, shift mask
    included, of key ``j`` for every query, kind-major), ``weights`` ``[heads·kinds·N, N]``
    (``exp(bias − top)``) and ``top`` ``[heads, kinds, N]`` (each query's largest bias)."""

    rows: Tensor
    weights: Tensor
    top: Tensor


@dataclass(frozen=True, eq=False)
class KeptOrder:
    """Windows of a batch sorted by their number of kept tokens, for :func:`kept_keys`.

    ``rows`` ``[n·N]`` gathers tokens ``[B·H·W, C]`` straight into the sorted windows (shift and
    partition included), ``inverse`` scatters them back; ``keep`` ``[n, N]`` (bool) and ``kind`` ``[n]``
    (see :class:`~maskdn.windows.WindowLayout`) follow the sorted order. Sorting lets windows with similar
    counts be attended together, each group padded only to its own largest count.
    """

    rows: Tensor
    inverse: Tensor
    keep: Tensor
    kind: Tensor


def windows_by_kept_count(layout: WindowLayout, batch: int, token_keep: Tensor) -> KeptOrder:
    """The :class:`KeptOrder` of ``batch`` images laid out by ``layout`` under ``token_keep`` ``[n, N, 1]``.

    Args:
        layout: The :class:`~maskdn.windows.WindowLayout` of the map.
        batch: Images B; ``n = B·nW``.
        token_keep: Keep mask ``[B·nW, N, 1]`` (> 0: kept), windows in shifted-window order.

    Returns:
        The :class:`KeptOrder` (int64 ``rows``/``inverse`` ``[B·H·W]``, bool ``keep`` ``[n, N]``,
        int64 ``kind`` ``[n]``), windows sorted by kept count, ascending, stable.
    """
    n_windows, N = token_keep.shape[0], token_keep.shape[1]
    keep = token_keep.reshape(n_windows, N) > 0
    by_count = torch.argsort(keep.sum(1), stable=True)
    L = layout.order.numel()
    image_start = L * torch.arange(batch, device=keep.device).view(batch, 1, 1)
    rows = (layout.order.view(1, -1, N) + image_start).view(n_windows, N)[by_count].view(-1)
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(rows.numel(), device=rows.device)
    return KeptOrder(rows, inverse, keep[by_count], layout.kind[by_count % layout.n_windows])


def attend_windows(attn: nn.Module, x: Tensor, layout: WindowLayout, offset: int = 0) -> Tensor:
    """Windows ``x`` ``[B_, N, C]`` without a token mask, after the output projection; ``layout`` says which
    windows need the shift mask, ``x`` holding the windows from number ``offset`` on.

    Args:
        attn: The :class:`maskdn.model.WindowAttention`.
        x: Normed windows ``[B_, N, C]`` (N = ws²), before the qkv projection.
        layout: The map's :class:`~maskdn.windows.WindowLayout`.
        offset: Number (across the batch) of the first window in ``x``.

    Returns:
        ``[B_, N, C]`` after the output projection, ``x``'s dtype (or the autocast dtype).
    """
    B_, N, C = x.shape
    heads, d = attn.num_heads, C // attn.num_heads
    qkv = linear(x, attn.qkv.weight, attn.qkv.bias)
    # [3·heads, B_·N, d]: one plain 3-D transpose copy (a 5-D permute copies far slower)
    qkv = qkv.view(B_ * N, 3 * heads, d).transpose(0, 1).contiguous().view(3, heads, B_, N, d)
    bias = attn.relative_position_bias().to(qkv.dtype)
    if torch.is_grad_enabled():  # all heads at once: per-head slices would each back-propagate a full zero qkv
        q, k, v = qkv.unbind(0)  # each [heads, B_, N, d]
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        scores.add_(bias.unsqueeze(1))  # in place is safe: matmul's backward does not need its output
        border = layout.border(offset, B_)
        if border is not None:
            hit, masks = border
            scores.index_add_(1, hit, masks.to(scores.dtype).unsqueeze(0).expand(heads, -1, -1, -1))
        out = (scores.softmax(-1) @ v).view(heads, B_ * N, d).transpose(0, 1).reshape(B_, N, C)
        return linear(out, attn.proj.weight, attn.proj.bias)
    # without autograd: one score buffer reused by every head (fresh pages fault), softmax in place
    outT = torch.empty(heads, B_, d, N, dtype=qkv.dtype, device=x.device)
    buffer = torch.empty(B_, N, N, dtype=qkv.dtype, device=x.device)
    border = layout.border(offset, B_)
    for i in range(heads):
        scores = torch.baddbmm(bias[i].expand(B_, -1, -1), qkv[0, i], qkv[1, i].transpose(1, 2),
                               alpha=attn.scale, out=buffer)
        if border is not None:
            scores.index_add_(0, border[0], border[1].to(scores.dtype))
        probs = torch.softmax(scores, dim=-1, out=scores)
        # transposed, (P·V)ᵀ = Vᵀ·Pᵀ: with d = 8–10 output columns the product runs 2–3× slower on CPU
        # than with the 64 queries as columns (docs/performance.md; with autograd it did not pay)
        torch.bmm(qkv[2, i].transpose(1, 2), probs.transpose(1, 2), out=outT[i])
    return linear(outT.permute(1, 3, 0, 2).reshape(B_, N, C), attn.proj.weight, attn.proj.bias)


def kept_keys(attn: nn.Module, tokens: Tensor, windows: Tensor, keep: Tensor, kind: Tensor, tables: KeyTables,
              norm: nn.Module | None = None, cuts: tuple[float, ...] = ()) -> Tensor:
    """Windows with a token mask: windows of ``tokens`` ``[M, C]``, window ``w`` being the rows
    ``windows[w]`` (``[n, N]``, distinct rows, windows sorted by kept count, see
    :func:`windows_by_kept_count`), kept tokens ``keep`` ``[n, N]`` (bool), window ``kind`` ``[n]`` and
    :func:`key_tables` as in :class:`~maskdn.windows.WindowLayout`; ``norm`` (the block's pre-norm) is
    applied here, to the kept tokens only. Returns ``[n, N, C]`` after the output projection.

    A masked token is zeroed before the qkv projection, so its query, key and value are the qkv bias
    ``b_q, b_k, b_v``: only kept tokens are gathered, normed and projected. Every masked key of a
    window is then the same vector ``b_k`` with value ``b_v``; only its relative-position bias
    differs, so the masked keys fold into one key whose logit is ``q·b_k·scale + log Σ_masked
    exp(bias)``, and a window attends to its ~16 kept keys plus that one instead of 64, padded to the
    largest count among the windows attended together. ``cuts`` (fractions of ``n``) split the sorted
    windows into groups attended separately, each padded to its own largest count.

    Args:
        attn: The :class:`maskdn.model.WindowAttention`.
        tokens: ``[M, C]`` token rows (not normed when ``norm`` is given).
        windows: int64 ``[n, N]``: rows of ``tokens`` of each window position.
        keep: bool ``[n, N]``: kept tokens.
        kind: int64 ``[n]``: each window's shift-mask kind.
        tables: :func:`key_tables` of this block and layout.
        norm: The block's pre-norm, or None when ``tokens`` are normed already.
        cuts: Group boundaries as fractions of ``n`` in (0, 1).

    Returns:
        ``[n, N, C]`` after the output projection, windows in the order of ``windows``.
    """
    n = windows.shape[0]
    bounds = sorted({0, n, *(round(c * n) for c in cuts)})
    n_kept = keep.sum(1)
    order = torch.argsort(keep.to(torch.uint8), dim=1, descending=True, stable=True)  # kept first
    groups, rows, valid, padded = [], [], [], False
    for a, b in itertools.pairwise(bounds):
        K = int(n_kept[a:b].max())
        groups.append((b - a, K))
        rows.append(windows[a:b].gather(1, order[a:b, :K]).reshape(-1))
        valid.append(torch.arange(K, device=keep.device) < n_kept[a:b, None])
        padded = padded or int(n_kept[a:b].min()) < K
    kept = _GatherRows.apply(tokens, torch.cat(rows))  # one gather for all groups: one backward copy
    if norm is not None:
        kept = norm(kept)
    if padded:  # a group's padding rows are masked tokens: zeroed, they project to the bias like any masked one
        kept = kept * torch.cat([v.reshape(-1, 1) for v in valid]).to(kept.dtype)
    qkv = linear(kept, attn.qkv.weight, attn.qkv.bias)
    out = []
    for (count, K), part, a, v in zip(groups, qkv.split([c * K for c, K in groups]), bounds, valid):
        sl = slice(a, a + count)
        out.append(_attend_kept(attn, part.view(count, K, part.shape[-1]), order[sl, :K], v, keep[sl], kind[sl], tables))
    return linear(out[0] if len(out) == 1 else torch.cat(out), attn.proj.weight, attn.proj.bias)


def key_tables(attn: nn.Module, kind_mask: Tensor) -> KeyTables:
    """Position-bias tables of :func:`kept_keys` for windows whose shift masks are ``kind_mask``
    ``[n_kinds, N, N]``, computed once per block (float32, outside autocast).

    Args:
        attn: The :class:`maskdn.model.WindowAttention`.
        kind_mask: ``[n_kinds, N, N]`` shift masks (0 or −100), :attr:`WindowLayout.kind_mask`.

    Returns:
        The float32 :class:`KeyTables` (differentiable in the bias table).
    """
    with torch.autocast(kind_mask.device.type, enabled=False):
        bias = attn.relative_position_bias().float().unsqueeze(1) + kind_mask  # [heads, kinds, N q, N k]
        top = bias.detach().amax(-1, keepdim=True)
        weights = (bias - top).exp() * (kind_mask == 0)  # the fold: keys of the query's own region only
        return KeyTables(bias.transpose(2, 3).flatten(1, 2), weights.flatten(0, 2), top.squeeze(-1))


def _attend_kept(attn: nn.Module, qkv: Tensor, order: Tensor, valid: Tensor, keep: Tensor, kind: Tensor,
                 tables: KeyTables) -> Tensor:
    """Attention of ``b`` windows from the projected kept tokens ``qkv`` ``[b, K, 3C]`` at window
    positions ``order`` ``[b, K]`` (``valid`` ``[b, K]``: not padding), before the output projection:
    ``[b, N, C]``."""
    b, K, C3 = qkv.shape
    C, N = C3 // 3, keep.shape[1]
    heads, d = attn.num_heads, C // attn.num_heads
    bias = attn.qkv.bias
    table, rows = _kept_key_table(~keep, order, valid, kind, tables)
    if kernel_available(qkv):  # the same computation in one fused pass (maskdn.fastpath.kernels)
        return kept_attention(qkv, order, bias, table, rows, heads, attn.scale)
    logits = table.index_select(1, rows.view(-1)).view(heads * b, K + 1, N)
    kv = qkv[..., C:].view(b, K, 2, heads, d)
    kv = torch.cat([kv, bias[C:].to(kv.dtype).view(1, 1, 2, heads, d).expand(b, 1, -1, -1, -1)], 1)
    keys = kv[:, :, 0].permute(2, 0, 1, 3).reshape(heads * b, K + 1, d)
    valuesT = kv[:, :, 1].permute(2, 0, 3, 1).reshape(heads * b, d, K + 1)
    qT = _PlaceQueries.apply(qkv[..., :C], order, bias[:C], heads, N)
    out = _KeysByQueries.apply(qT, keys, valuesT, logits, attn.scale)
    return out.view(heads, b, d, N).permute(1, 3, 0, 2).reshape(b, N, C)


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
