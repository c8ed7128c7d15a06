"""The two masks of masked image training, drawn with torch RNG on the data's device.

* :func:`input_mask` (training only): hide most input pixels so the network cannot just learn the
  training noise; it must rebuild the image from the few visible noisy pixels.
* :func:`token_keep_mask`: the attention mask, a 0/1 keep mask over tokens applied before every qkv
  projection, in training and at test time (see :class:`maskdn.MaskedSwinIR`).

Randomness comes only from an optional ``torch.Generator`` (else torch's global RNG for that device),
never from NumPy, so a seeded pass is reproducible and nothing round-trips through the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import MaskdnError

__all__ = ["INPUT_MASK_FILL", "check_mask_range", "input_mask", "token_keep_mask"]

INPUT_MASK_FILL = -0.1
"""Value of hidden input pixels: the paper's −0.1, a value no image has."""


def check_mask_range(value: Any, name: str = "ratio_range") -> None:
    """Raise :class:`MaskdnError` naming ``name`` unless ``value`` is a pair ``(lo, hi)`` with ``0 <= lo <= hi < 1``.

    Args:
        value: The value to check (expected a pair of floats).
        name: The setting's name, used in the message.

    Raises:
        MaskdnError: ``"{name} must satisfy 0 <= lo <= hi < 1, not {value}"``.
    """
    try:
        lo, hi = value
        ok = 0.0 <= lo <= hi < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shown = list(value) if isinstance(value, (tuple, list)) else repr(value)
        raise MaskdnError(f"{name} must satisfy 0 <= lo <= hi < 1, not {shown}")


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def token_keep_mask(
    shape: tuple[int, ...], ratio: float, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A mask of ``shape`` in ``like``'s dtype and device: 0 with probability ``ratio``, else 1.

    Each token is dropped independently (Bernoulli), so about ``ratio`` of the tokens are zeroed. This
    is the attention mask of Chen et al., CVPR 2023 ("Masked Image Training for Generalizable Deep
    Image Denoising"), applied to the tokens before every qkv projection.

    Args:
        shape: Output shape, e.g. ``[n_blocks, B·nW, N, 1]`` with ``N = window_size²``.
        ratio: Drop probability in [0, 1) (the paper: 0.75).
        like: Tensor whose dtype and device the mask takes.
        generator: Optional ``torch.Generator`` on ``like``'s device; else torch's global RNG.

    Returns:
        Tensor of ``shape``, values exactly 0 or 1, in ``like``'s dtype and on its device.
    """
    return (_uniform(shape, like, generator) >= ratio).to(like.dtype)


def input_mask(
    x: Tensor,
    ratio_range: tuple[float, float] = (0.8, 0.9),
    fill: float = INPUT_MASK_FILL,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask pixels of a batch ``[B, C, H, W]``; returns ``(masked, keep)`` with ``keep`` ``[B, 1, H, W]``.

    Per sample a ratio ``r`` is drawn uniformly from ``ratio_range``; each pixel is then hidden with
    probability ``r`` and all its channels are set to ``fill`` (default :data:`INPUT_MASK_FILL`, the paper's −0.1).
    The input mask of Chen et al., CVPR 2023 (training only; the paper draws ratios in 0.8–0.9).

    Args:
        x: Images ``[B, C, H, W]``, float, values in [0, 1].
        ratio_range: ``(lo, hi)`` with ``0 <= lo <= hi < 1``: range of the per-sample hiding ratio.
        fill: Value given to every channel of a hidden pixel.
        generator: Optional ``torch.Generator`` on ``x``'s device; else torch's global RNG.

    Returns:
        ``(masked, keep)``: ``masked`` ``[B, C, H, W]`` in ``x``'s dtype (``x`` where kept, ``fill``
        where hidden) and ``keep`` ``[B, 1, H, W]`` in ``x``'s dtype, 1 for kept pixels and 0 for hidden.

    Raises:
        MaskdnError: ``"ratio_range must satisfy 0 <= lo <= hi < 1, not ..."``.
    """
    check_mask_range(ratio_range)
    lo, hi = ratio_range
    B, _, H, W = x.shape
    ratio = lo + (hi - lo) * _uniform((B, 1, 1, 1), x, generator)
    keep = (_uniform((B, 1, H, W), x, generator) >= ratio).to(x.dtype)
    return x * keep + fill * (1 - keep), keep
