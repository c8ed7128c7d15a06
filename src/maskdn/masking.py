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
    """Raise :class:`MaskdnError` naming ``name`` unless ``value`` is a pair ``(lo, hi)`` with ``0 <= lo <= hi < 1``."""
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

    Each token is dropped independently (Bernoulli), so about ``ratio`` of the tokens are zeroed.
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
    A ``ratio_range`` outside ``0 <= lo <= hi < 1`` is a :class:`MaskdnError`.
    """
    check_mask_range(ratio_range)
    lo, hi = ratio_range
    B, _, H, W = x.shape
    ratio = lo + (hi - lo) * _uniform((B, 1, 1, 1), x, generator)
    keep = (_uniform((B, 1, H, W), x, generator) >= ratio).to(x.dtype)
    return x * keep + fill * (1 - keep), keep
