"""Image quality metrics as denoising papers compute them.

Images are float in [0, 1]; before scoring, both are clamped and rounded to 8 bits (as saved PNGs are),
and PSNR is taken over all RGB values jointly, one score per image.

SSIM follows the field's convention (Wang et al. 2004 as used by BasicSR and most denoising papers):
11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, population (not sample) statistics,
averaged over the 'valid' region (no padding effects), per channel and then averaged over channels.

``y_channel=True`` scores the ITU-R BT.601 luma of the rounded 8-bit RGB instead, as MATLAB ``rgb2ycbcr``:
``Y = 16 + 65.481·R + 128.553·G + 24.966·B`` with R, G, B in [0, 1] (Y on the 0–255 scale, not rounded).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import MaskdnError

__all__ = ["SSIM_MIN_SIZE", "psnr", "ssim", "to_uint8_levels", "rgb_to_y"]

SSIM_MIN_SIZE = 11
"""The smallest side :func:`ssim` scores: its 11×11 Gaussian window (σ = 1.5) must fit inside the
image, since the map is averaged over the 'valid' region. Smaller images get PSNR only."""


def to_uint8_levels(x: Tensor) -> Tensor:
    """Float image in [0, 1] → float64 values on the 0–255 integer grid (clamped and rounded).

    Args:
        x: Image tensor of any shape, values nominally in [0, 1].

    Returns:
        float64 tensor of ``x``'s shape, detached, integer values in 0–255 (as a saved 8-bit PNG).
    """
    return torch.round(x.detach().double().clamp(0.0, 1.0) * 255.0)


def rgb_to_y(levels: Tensor) -> Tensor:
    """BT.601 luma (MATLAB ``rgb2ycbcr``) of ``[3, H, W]`` RGB on the 0–255 scale → ``[1, H, W]`` in [16, 235].

    ``Y = 16 + (65.481·R + 128.553·G + 24.966·B)/255`` on 8-bit levels, not rounded (as BasicSR/KAIR's
    ``bgr2ycbcr(..., y_only=True)``).

    Args:
        levels: RGB ``[3, H, W]`` on the 0–255 scale (e.g. from :func:`to_uint8_levels`).

    Returns:
        ``[1, H, W]`` in ``levels``' dtype, values in [16, 235].

    Raises:
        MaskdnError: ``"y_channel needs RGB images [3, H, W], got (...)"``.
    """
    if levels.ndim != 3 or levels.shape[0] != 3:
        raise MaskdnError(f"y_channel needs RGB images [3, H, W], got {tuple(levels.shape)}")
    w = torch.tensor([65.481, 128.553, 24.966], dtype=levels.dtype, device=levels.device)
    return 16.0 + torch.einsum("c,chw->hw", w, levels / 255.0)[None]


def _prepare(output: Tensor, target: Tensor, crop_border: int, y_channel: bool) -> tuple[Tensor, Tensor]:
    """Both images as float64 8-bit levels (or their Y), border-cropped."""
    if output.shape != target.shape:
        raise MaskdnError(f"shape mismatch: {tuple(output.shape)} vs {tuple(target.shape)}")
    a, b = to_uint8_levels(output), to_uint8_levels(target)
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(output: Tensor, target: Tensor, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB between two ``[C, H, W]`` (or ``[H, W]``) images in [0, 1], on 8-bit levels.

    With ``y_channel=True`` (RGB only) it is taken on the BT.601 Y of the 8-bit values. Identical images
    give ``inf``. As BasicSR/KAIR's ``calculate_psnr``: ``10·log10(255² / MSE)`` over all values jointly.

    Args:
        output: Restored image ``[C, H, W]`` or ``[H, W]``, float in [0, 1] (clamped, rounded to 8 bits).
        target: Reference image, same shape.
        crop_border: Pixels removed from each side before scoring (0: none).
        y_channel: Score the BT.601 luma (:func:`rgb_to_y`) instead of all channels.

    Returns:
        PSNR in dB (``math.inf`` for identical images).

    Raises:
        MaskdnError: ``"shape mismatch: (...) vs (...)"``, or ``"y_channel needs RGB images [3, H, W],
            got (...)"``.
    """
    a, b = _prepare(output, target, crop_border, y_channel)
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(output: Tensor, target: Tensor, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM between two ``[C, H, W]`` (or ``[H, W]``) images in [0, 1], on 8-bit levels (see module doc).

    Computed with scikit-image's ``structural_similarity`` (Gaussian weights σ = 1.5 → 11 taps,
    ``use_sample_covariance=False``, ``data_range=255``), which averages the SSIM map over the valid
    region only, per channel, then over channels. Identical images give 1.0. Needs H, W ≥ 11 after
    cropping. SSIM of Wang et al. 2004 with the 11×11 Gaussian window, as BasicSR/KAIR compute it.

    Args:
        output: Restored image ``[C, H, W]`` or ``[H, W]``, float in [0, 1] (clamped, rounded to 8 bits).
        target: Reference image, same shape.
        crop_border: Pixels removed from each side before scoring (0: none).
        y_channel: Score the BT.601 luma (:func:`rgb_to_y`) instead of all channels.

    Returns:
        Mean SSIM, a float ≤ 1.

    Raises:
        MaskdnError: ``"shape mismatch: (...) vs (...)"``, ``"y_channel needs RGB images [3, H, W], got
            (...)"``, or ``"ssim needs images of at least 11x11 after cropping, got (...)"``.
    """
    from skimage.metrics import structural_similarity

    a, b = _prepare(output, target, crop_border, y_channel)
    if a.shape[-1] < SSIM_MIN_SIZE or a.shape[-2] < SSIM_MIN_SIZE:
        raise MaskdnError(f"ssim needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} after cropping, "
                          f"got {tuple(a.shape)}")
    an, bn = a.cpu().numpy().astype(np.float64), b.cpu().numpy().astype(np.float64)
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0)
    if an.ndim == 3:
        kwargs["channel_axis"] = 0
    return float(structural_similarity(an, bn, **kwargs))
