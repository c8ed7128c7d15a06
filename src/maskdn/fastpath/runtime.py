"""Process-wide CPU settings that matter as much as the kernels.

On Linux, glibc's malloc serves every large tensor with a fresh ``mmap`` and unmaps it when freed, so
each new activation buffer page-faults on first touch. On the 2-core machines this project trains on,
that costs more than the arithmetic: the literal attention path spends most of its time faulting in
score buffers (see ``docs/performance.md``). :func:`keep_freed_memory` tells malloc to serve large
blocks from its heap and to keep freed memory for reuse, which removes those faults at the price of a
resident size that does not shrink after a peak. The CLI and the trainer call it; library users may.
Set ``MASKDN_KEEP_FREED_MEMORY=0`` to leave the allocator alone.

:func:`autocast_on_cpu` and :func:`compiling` tell the hand-written CPU paths
(:mod:`maskdn.fastpath.linear`, :mod:`maskdn.fastpath.kernels`) when to step aside for PyTorch's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["autocast_on_cpu", "compiling", "keep_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed memory instead of returning it; True when applied.

    Idempotent; a no-op (returning False) off Linux/glibc or when ``MASKDN_KEEP_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MASKDN_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1  # large blocks from the heap, not fresh mappings
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # never give the heap's top back
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1  # grow the heap in 64 MiB steps
    _applied = bool(ok)
    return _applied


def autocast_on_cpu() -> bool:
    """Whether CPU autocast is on: the hand-written float32 paths decide by it whether to step aside."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the current code: opaque calls step aside for it."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
