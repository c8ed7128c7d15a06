"""A fused CPU kernel for masked window attention, compiled from C on first use.

With a token mask, the fast path attends each window's ~16 kept keys (plus one folded masked key)
from 64 queries and a head dimension of 10 (:func:`maskdn.fastpath.attention.kept_keys`). At those
sizes PyTorch's batched matmuls run far below the machine's peak, and the permuted copies around
them (queries into window positions, keys, values, the output back to token order) cost as much
again. ``csrc/kept_attention.c`` does the whole core of a window in one pass over its data, in the
layouts the model already has: scores, softmax, weighted sum, and in the backward every gradient,
including those of the qkv bias that masked positions take (see ``docs/performance.md``).

It is C with no PyTorch headers (and GCC's vector extension, which Clang has too): compiled in about
a second with the system's C compiler (``$CC``, else ``cc``) at ``-O3 -march=native``, cached under
``$MASKDN_CACHE_DIR`` (default ``~/.cache/maskdn``) by a hash of the source, the compiler and the CPU's
flags, and called through :mod:`ctypes` (which releases the GIL, so windows are split over
``torch.get_num_threads()`` threads).
Under bf16 autocast it computes in float32 from the bf16 projection. Without a compiler, off CPU, for
other dtypes, under ``torch.compile``, with ``MASKDN_CPU_KERNEL=0`` or inside :func:`disabled`,
:func:`kernel_available` is False and the model keeps its PyTorch path (same results).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from .runtime import autocast_on_cpu, compiling

__all__ = ["disabled", "kept_attention", "kernel_available", "kernel_status"]

log = logging.getLogger(__name__)

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-trapping-math", "-std=gnu11", "-fPIC", "-shared"]
_lib: ctypes.CDLL | None = None
_status: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_disabled = False


def _cache_dir() -> Path:
    root = os.environ.get("MASKDN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "maskdn")
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    """What ``-march=native`` depends on: a binary built for one CPU may not run on another."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    source = resources.files("maskdn.fastpath").joinpath("csrc/kept_attention.c").read_bytes()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"kept_attention-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / "kept_attention.c", Path(tmp) / "kept_attention.so"
            src.write_bytes(source)
            done = subprocess.run([cc, *_FLAGS, "-o", str(lib), str(src), "-lm"], capture_output=True, text=True,
                                  timeout=300, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed: {done.stderr.strip()[:500]}")
            os.replace(lib, target)  # atomic: concurrent processes never load a half-written file
    lib = ctypes.CDLL(str(target))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.kept_attention_forward.argtypes = [ptr] * 6 + [i64] * 7 + [f32]
    lib.kept_attention_backward.argtypes = [ptr] * 9 + [i64] * 7 + [f32]
    lib.kept_attention_forward.restype = lib.kept_attention_backward.restype = ctypes.c_int
    return lib


def kernel_status() -> str:
    """``"compiled"``, or why the kernel is not used (built or diagnosed once per process).

    Returns:
        ``"compiled"``, ``"off (MASKDN_CPU_KERNEL=0)"`` or ``"unavailable: <reason>"``.
    """
    global _lib, _status
    if _status is None:
        if os.environ.get("MASKDN_CPU_KERNEL", "1") == "0":
            _status = "off (MASKDN_CPU_KERNEL=0)"
        else:
            try:
                _lib, _status = _build(), "compiled"
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _status = f"unavailable: {e}"
                log.info("maskdn: fused CPU attention kernel %s; using the PyTorch path", _status)
    return _status


@contextlib.contextmanager
def disabled():
    """Within it the model takes its PyTorch path: to compare the two in one process (tests, benchmarks).

    Returns:
        A context manager (yields None); the previous state is restored on exit.
    """
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


def kernel_available(qkv: Tensor) -> bool:
    """Whether :func:`kept_attention` can take ``qkv``: float32 on CPU (or bf16 under CPU autocast), not
    traced by ``torch.compile``, not :func:`disabled`, kernel compiled.

    Args:
        qkv: The projected kept tokens ``[b, K, 3C]``.

    Returns:
        True when the fused kernel applies.
    """
    if _disabled or qkv.device.type != "cpu" or compiling():
        return False
    if qkv.dtype != torch.float32 and not (qkv.dtype == torch.bfloat16 and autocast_on_cpu()):
        return False
    return kernel_status() == "compiled"


def _split(b: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), b))
    bounds = [b * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _run(fn, ranges: list[tuple[int, int]], args) -> None:
    """``fn(*args_for_range, w0, w1, ...)`` over window ranges, on threads when there are several."""
    global _pool, _pool_size
    if len(ranges) == 1:
        codes = [fn(*args(0, *ranges[0]))]
    else:
        if _pool_size < len(ranges):
            _pool, _pool_size = ThreadPoolExecutor(len(ranges), thread_name_prefix="maskdn-kernel"), len(ranges)
        codes = list(_pool.map(lambda i: fn(*args(i, *ranges[i])), range(len(ranges))))
    if any(codes):
        raise MemoryError("maskdn's attention kernel could not allocate its scratch buffer")


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


class _KeptAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, order: Tensor, bias: Tensor, table: Tensor, rows: Tensor, heads: int,
                scale: float) -> Tensor:
        b, K, C3 = qkv.shape
        C, (_, R, N) = C3 // 3, table.shape
        qkv, order, bias, table, rows = (t.contiguous() for t in (qkv, order, bias, table, rows))
        out = qkv.new_empty(b, N, C)
        dims = (K, N, R, heads, C // heads, scale)
        _run(_lib.kept_attention_forward, _split(b),
             lambda i, w0, w1: (_ptr(qkv), _ptr(order), _ptr(bias), _ptr(table), _ptr(rows), _ptr(out), w0, w1, *dims))
        ctx.save_for_backward(qkv, order, bias, table, rows)
        ctx.dims = dims
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        qkv, order, bias, table, rows = ctx.saved_tensors
        grad = grad.contiguous()
        ranges = _split(qkv.shape[0])
        d_qkv = torch.empty_like(qkv)
        # windows share table rows and the bias: one accumulator per thread, summed below
        d_bias = bias.new_zeros(len(ranges), bias.numel())
        d_table = table.new_zeros(len(ranges), *table.shape)
        _run(_lib.kept_attention_backward, ranges,
             lambda i, w0, w1: (_ptr(grad), _ptr(qkv), _ptr(order), _ptr(bias), _ptr(table), _ptr(rows),
                                _ptr(d_qkv), _ptr(d_bias[i]), _ptr(d_table[i]), w0, w1, *ctx.dims))
        return d_qkv, None, d_bias.sum(0), d_table.sum(0), None, None, None


def kept_attention(qkv: Tensor, order: Tensor, bias: Tensor, table: Tensor, rows: Tensor, heads: int,
                   scale: float) -> Tensor:
    """Attention of ``b`` windows over their kept tokens, before the output projection: ``[b, N, C]``.

    ``qkv`` ``[b, K, 3C]`` projected kept tokens (padding rows project to the bias), ``order`` ``[b, K]``
    their window positions (distinct per window), ``bias`` ``[3C]`` the qkv bias (``b_q``: the query
    of every other position; ``b_k, b_v``: the folded masked key, last). Key ``k`` of window ``w``
    has the position bias ``table[:, rows[w, k]]`` (``table`` ``[heads, R, N]``, ``rows`` ``[b, K+1]``;
    a row of −inf: padding). Differentiable in ``qkv``, ``bias`` and ``table``. Call only where
    :func:`kernel_available` is True.

    Args:
        qkv: ``[b, K, 3C]``, float32 or bf16 (computed in float32).
        order: ``[b, K]`` window positions in 0 … N−1 (any integer dtype).
        bias: ``[3C]`` qkv bias.
        table: ``[heads, R, N]`` position-bias rows.
        rows: ``[b, K+1]`` row of ``table`` per key.
        heads: Number of heads; head width ``C // heads``.
        scale: Query scale (``head_dim^−0.5``).

    Returns:
        float32 ``[b, N, C]``.

    Raises:
        MemoryError: ``"maskdn's attention kernel could not allocate its scratch buffer"``.
    """
    qkv, bias, table = qkv.float(), bias.float(), table.float()  # bf16 autocast: the core runs in float32
    return _KeptAttention.apply(qkv, order.to(torch.int64), bias, table, rows.to(torch.int64), heads, scale)
