"""How much memory denoising takes and how much the device has: the basis of automatic tiling.

Window attention keeps a forward pass's memory linear in the pixel count, so its peak is predictable
from the image size before any work: :func:`forward_bytes_per_pixel` × B × H × W (H, W padded to the
window). :func:`plan_tile` compares that with what the device has free (:func:`available_memory`) and
picks the largest tile that fits when the whole image does not, so a large photo never ends in an
allocator traceback. The coefficients are upper bounds of peaks measured on the CPU with
``benchmarks/inference_memory.py``, which prints predicted against measured for every preset and path.
"""

from __future__ import annotations

import math
import os

import torch

__all__ = [
    "MEMORY_FRACTION",
    "available_memory",
    "forward_bytes_per_pixel",
    "full_resolution_bytes",
    "is_out_of_memory",
    "plan_tile",
]

MEMORY_FRACTION = 0.6
"""Share of the available memory one forward pass may take; the rest is for the image, the tile
accumulators and whatever else runs."""

_FAST_BASE, _FAST_PER_CHANNEL = 256, 4
"""CPU fast path (:mod:`maskdn.fastpath`): ``4 · (256 + 4·C)`` bytes per pixel. Measured peaks at
512×512 (``benchmarks/results/inference_memory.json``): 1,237 (tiny, C = 24), 1,346 (small, C = 32),
1,748 (paper, C = 60) bytes per pixel, against 1,408, 1,536 and 1,984 predicted (1.13–1.14×)."""

_DENSE_PER_SCORE, _DENSE_PER_CHANNEL = 6, 8
"""Dense attention paths (``reference``, ``sdpa``, ``batched``, every GPU path): the scores
``[windows, heads, N, N]`` dominate, so ``4 · (6·heads·N + 8·C)`` bytes per pixel (N = ws²). Measured
on the CPU at 512×512: reference 2,607 / 3,391 / 5,377 and sdpa 3,666 / 4,804 / 7,543 bytes per pixel
(tiny / small / paper), against 5,376 / 7,168 / 11,136 predicted (1.47–2.11×). Not yet measured on a
GPU, where a failure is still one line (:func:`is_out_of_memory`)."""


def forward_bytes_per_pixel(model: torch.nn.Module) -> int | None:
    """An upper bound on the peak memory of one forward pass of ``model``, in bytes per input pixel.

    For :class:`maskdn.model.MaskedSwinIR`, from its width ``C = embed_dim``, heads, window and
    attention path (see the module constants for the measurements behind each formula); float32
    activations (bf16 autocast needs less). Other architectures have no formula.

    Args:
        model: The denoiser, on the device it runs on.

    Returns:
        Bytes per pixel of a batch of one (multiply by ``B·H·W``), or None when unknown.
    """
    from .model import MaskedSwinIR, WindowAttention

    if not isinstance(model, MaskedSwinIR):
        return None
    c = model.config
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    impls = {m.impl for m in model.modules() if isinstance(m, WindowAttention)}
    if on_cpu and impls == {"fast"}:
        return 4 * (_FAST_BASE + _FAST_PER_CHANNEL * c.embed_dim)
    return 4 * (_DENSE_PER_SCORE * max(c.num_heads) * c.window_size**2 + _DENSE_PER_CHANNEL * c.embed_dim)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: str | torch.device) -> int | None:
    """Bytes that new tensors on ``device`` can take now.

    The CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux; else free physical pages from ``sysconf``).
    CUDA: free device memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator holds
    but does not use. Other devices: unknown.

    Args:
        device: A torch device or its name.

    Returns:
        Bytes, or None when unknown.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _meminfo_available()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def plan_tile(model: torch.nn.Module, shape: tuple[int, ...], device: str | torch.device,
              tile_overlap: int = 32) -> int | None:
    """The tile side that lets a forward pass over ``shape`` fit in memory, or None when the whole fits.

    The whole batch fits when :func:`forward_bytes_per_pixel` × B × H × W (H, W padded to
    ``model.size_multiple``) is at most :data:`MEMORY_FRACTION` of :func:`available_memory`. Otherwise
    the tile is the largest multiple of ``size_multiple`` whose square fits that budget, and at least
    ``tile_overlap + 2·size_multiple`` (smaller tiles would be nearly all overlap; if even that does not
    fit, the run may still fail, as one line).

    Args:
        model: The denoiser, on ``device``.
        shape: The input batch's shape ``[B, C, H, W]``.
        device: Where it runs.
        tile_overlap: The overlap the tiles will have, in pixels.

    Returns:
        The tile side in pixels, or None (no tiling needed, or no prediction for this model or device).
    """
    per_pixel = forward_bytes_per_pixel(model)
    available = available_memory(device)
    if per_pixel is None or available is None:
        return None
    m = max(1, int(getattr(model, "size_multiple", 1)))
    B, H, W = shape[0], shape[-2], shape[-1]
    budget = available * MEMORY_FRACTION
    if per_pixel * B * math.ceil(H / m) * m * math.ceil(W / m) * m <= budget:
        return None
    side = int(math.sqrt(budget / (per_pixel * B)))
    return max(side - side % m, tile_overlap + 2 * m)


def full_resolution_bytes(height: int, width: int, channels: int, itemsize: int) -> int:
    """Bytes that denoising one page keeps at full resolution besides the forward pass itself.

    The decoded page and its result (``channels × itemsize`` bytes per pixel each), the float32 RGB
    input, and with tiles the float32 output accumulator and the blending weights (3 + 3 + 1 floats).

    Args:
        height: Rows in pixels.
        width: Columns in pixels.
        channels: Channels of the decoded page (1–4).
        itemsize: Bytes per sample of the decoded page (1, 2, 4 or 8).

    Returns:
        The bytes.
    """
    return height * width * (2 * channels * itemsize + 4 * 7)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA) or the
    CPU allocator's ``RuntimeError`` ("can't allocate memory").

    Args:
        e: Any exception.

    Returns:
        True for an allocation failure.
    """
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
