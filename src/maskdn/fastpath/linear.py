"""Float32 linear layers on oneDNN's matmul: the fast path's projections and MLP on CPU.

PyTorch runs a float32 ``F.linear`` on CPU through MKL's GEMM. For this model's thin shapes (tens of
thousands of tokens × 32–180 columns) oneDNN's matmul primitive, the one PyTorch's compiler emits for
CPU linear layers (``torch.ops.mkldnn._linear_pointwise``), is faster on this project's machines and
gives the same result (measured by ``benchmarks/linear.py``, see ``docs/performance.md``). :func:`linear`
uses it for the forward product and for the input gradient, and for the weight's (a long reduction
over tokens) where the layer is at least 48 wide (below that MKL is faster here), reading the
transposed operands as strided views, which oneDNN takes in place (transposed copies would cost more
than they save). :func:`linear_gelu` fuses the GELU into the product without autograd
(inference).

Everything else falls back to ``F.linear``: other devices and dtypes, bf16 autocast (which already
runs on oneDNN), code being traced by ``torch.compile`` and PyTorch builds without the op.
``MASKDN_ONEDNN_LINEAR=0`` turns it off (to compare).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import autocast_on_cpu, compiling

__all__ = ["linear", "linear_gelu", "onednn_linear", "onednn_strided", "uses_onednn"]


def _probe() -> bool:
    """Whether the op exists, runs and agrees with ``F.linear`` here (once per process)."""
    if os.environ.get("MASKDN_ONEDNN_LINEAR", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        # fixed values, not torch.randn: the probe must not move the global RNG (seeded runs, resumes)
        x = torch.linspace(-1, 1, 32).view(8, 4)
        w, b = torch.linspace(-0.5, 0.7, 12).view(3, 4), torch.tensor([0.1, -0.2, 0.3])
        return bool(torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


_available: bool | None = None


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`linear` runs ``x`` through oneDNN: float32 on CPU, no autocast, op available.

    Args:
        x: The input.
        weight: The weight.

    Returns:
        True when both are float32 on CPU, CPU autocast and ``torch.compile`` tracing are off, and the
        op passed its one-time probe (and ``MASKDN_ONEDNN_LINEAR`` is not ``0``).
    """
    global _available
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if autocast_on_cpu() or compiling():  # torch.compile emits this op itself, for constant weights only
        return False
    if _available is None:
        _available = _probe()
    return _available


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    """``x @ weight.T + bias``, then ``activation`` (``"none"`` or ``"gelu"``), in one oneDNN call without
    autograd (what :func:`linear` runs; ``benchmarks/linear.py`` times it). Only where :func:`uses_onednn`.

    Via ``torch.ops.mkldnn._linear_pointwise``; ``"gelu"`` is the exact (erf) GELU.

    Args:
        x: ``[..., in]`` float32 on CPU.
        weight: ``[out, in]`` float32.
        bias: ``[out]`` or None.
        activation: ``"none"`` or ``"gelu"``.

    Returns:
        ``[..., out]`` float32.
    """
    algorithm = "none" if activation == "gelu" else ""  # "none": the exact (erf) GELU, as nn.GELU
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, activation, [], algorithm)


def onednn_strided(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` on oneDNN for transposed (column-major) views, without copying them (the weight
    gradient's product, without autograd).

    Args:
        a: ``[m, k]`` float32 (may be a transposed view).
        b: ``[n, k]`` float32 (may be a transposed view).

    Returns:
        ``[m, n]`` float32.
    """
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


STRIDED_WEIGHT_GRAD_MIN_IN = 48
"""Input width from which the weight gradient runs on oneDNN (strided views) rather than MKL: in
``benchmarks/linear.py`` oneDNN won at every layer 60 or more wide (paper preset) and at the small
preset's 64-wide fc2, and lost at every 32-wide one (timings: see docs/performance.md)."""


def _weight_grad(grad_rows: Tensor, x_rows: Tensor) -> Tensor:
    """``grad_rows.T @ x_rows`` (the weight gradient, a long reduction over tokens) on the faster library."""
    if x_rows.shape[1] >= STRIDED_WEIGHT_GRAD_MIN_IN:
        return onednn_strided(grad_rows.t(), x_rows.t())
    return grad_rows.t().mm(x_rows)


class _OneDnnLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` with oneDNN for the forward and the input gradient (and see :func:`_weight_grad`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        rows = grad.view(-1, grad.shape[-1])
        d_x = onednn_linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        d_weight = _weight_grad(rows, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        d_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_x, d_weight, d_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN where :func:`uses_onednn` says so.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``.
        bias: ``[out]`` or None.

    Returns:
        ``[..., out]`` (differentiable in all three).
    """
    if uses_onednn(x, weight):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``gelu(F.linear(x, weight, bias))``; fused in one oneDNN call without autograd.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``.
        bias: ``[out]`` or None.

    Returns:
        ``[..., out]``, the exact (erf) GELU applied.
    """
    if not torch.is_grad_enabled() and uses_onednn(x, weight):
        return onednn_linear(x, weight, bias, "gelu")
    return F.gelu(linear(x, weight, bias))
