"""Image quality metrics as denoising papers compute them.

Images are float in [0, 1]; before scoring, both are clamped and rounded to 8 bits (as saved PNGs are),
and PSNR is taken over all RGB values jointly, one score per image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["psnr", "to_uint8_levels"]


def to_uint8_levels(x: Tensor) -> Tensor:
    """Float image in [0, 1] → float64 values on the 0–255 integer grid (clamped and rounded)."""
    return torch.round(x.detach().double().clamp(0.0, 1.0) * 255.0)


def psnr(output: Tensor, target: Tensor, crop_border: int = 0) -> float:
    """PSNR in dB between two ``[C, H, W]`` (or ``[H, W]``) images in [0, 1], on 8-bit levels.

    Identical images give ``inf``.
    """
    if output.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(output.shape)} vs {tuple(target.shape)}")
    a, b = to_uint8_levels(output), to_uint8_levels(target)
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
