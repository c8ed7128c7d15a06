"""Uncertainty maps from the attention mask: the spread of a masked model's stochastic passes.

A masked-training model keeps its attention token mask on at test time (Chen et al., CVPR 2023), so
each forward pass is one random draw and ``maskdn denoise --passes K`` averages ``K`` of them. The
per-pixel standard deviation of those ``K`` draws says where the reconstruction depends on which
tokens were masked: where the model is unsure. This module holds what is specific to that map:

* :func:`check_uncertainty`: refuse a model or a pass count that cannot give a spread;
* :func:`channel_rms`: the per-channel std of :func:`maskdn.inference.denoise_tensor` as one map;
* :func:`std_paths`, :func:`write_uncertainty`: the map beside an output (float32 TIFF) and its figure
  with a colour bar (PNG);
* :func:`error_agreement`: how well a std map predicts the actual absolute error (``docs/uncertainty.md``
  and ``benchmarks/uncertainty.py``).

Units: the std is in the image's [0, 1] intensity units (``× 255`` for 8-bit levels; the figure's
colour bar is in 8-bit levels). It is the population standard deviation over the samples (divided
by their count ``K``, or ``8K`` with the ×8 self-ensemble, whose transforms it then also spans).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import MaskdnError
from .io import atomic_write

__all__ = ["channel_rms", "check_uncertainty", "colorbar_figure", "error_agreement", "std_paths",
           "write_uncertainty"]


def check_uncertainty(model: torch.nn.Module, passes: int) -> None:
    """Raise unless ``model`` is stochastic at test time and ``passes >= 2`` (else the spread is zero).

    Args:
        model: The denoiser; a :class:`maskdn.model.MaskedSwinIR` is stochastic when its attention
            mask stays on in eval mode (``attn_mask_ratio > 0`` and ``attn_mask_at_eval``); another
            model when its ``stochastic`` attribute (:class:`maskdn.denoiser.Denoiser`) says so.
        passes: The number of passes that will be averaged.

    Raises:
        MaskdnError: ``"an uncertainty map (uncertainty=True, --uncertainty) needs a model whose
            attention mask is on at test time ..."`` for a deterministic model, or ``"... needs 2 or
            more passes (passes=, --passes) ..."``.
    """
    config = getattr(model, "config", None)
    if hasattr(config, "attn_mask_ratio"):  # a SwinIR: stochastic when denoising (eval mode) only if the mask stays on
        stochastic = config.attn_mask_ratio > 0 and bool(getattr(config, "attn_mask_at_eval", False))
    else:  # another maskdn.denoiser.Denoiser (IDF: deterministic)
        stochastic = bool(getattr(model, "stochastic", False))
    if not stochastic:
        raise MaskdnError("an uncertainty map (uncertainty=True, --uncertainty) needs a model whose attention mask "
                          "is on at test time (e.g. masked-small); this one is deterministic, so its passes do not spread")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 2:
        raise MaskdnError("an uncertainty map (uncertainty=True, --uncertainty) needs 2 or more passes "
                          f"(passes=, --passes: the spread of the passes), not {passes!r}")


def channel_rms(std: Tensor) -> Tensor:
    """One map per image from per-channel standard deviations: the root mean square over channels.

    Args:
        std: ``[B, C, H, W]`` per-channel std (the second result of ``denoise_tensor(...,
            uncertainty=True)``), values >= 0.

    Returns:
        ``[B, H, W]``, ``sqrt(mean_c std²)``: the std of a pixel's intensity averaged over channels
        if the channels were independent; same dtype and device.
    """
    return std.square().mean(dim=1).sqrt()


def std_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """Where the map of ``output`` goes: ``<stem>_std.tif`` (float32 values) and ``<stem>_std.png`` (figure).

    Args:
        output: The denoised image's path.

    Returns:
        ``(tiff_path, figure_path)`` in the same folder.
    """
    output = Path(output)
    return output.with_name(f"{output.stem}_std.tif"), output.with_name(f"{output.stem}_std.png")


def colorbar_figure(std_map: np.ndarray, title: str = "") -> np.ndarray:
    """The map drawn with a colour bar in 8-bit levels, as an RGB image (matplotlib, ``magma``).

    Args:
        std_map: ``[H, W]`` float, std in [0, 1] intensity units.
        title: A line above the map (e.g. the model and K).

    Returns:
        ``[h, w, 3]`` uint8 RGB: the figure at the map's aspect ratio, about 900 px on its long side.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = np.asarray(std_map, dtype=np.float32) * 255.0
    H, W = levels.shape
    scale = 8.0 / max(H, W)
    fig = Figure(figsize=(W * scale + 1.6, H * scale + 0.6), dpi=110)
    ax = fig.add_axes((0.02, 0.04, 0.78, 0.88))
    top = float(np.percentile(levels, 99.5)) or 1.0  # a few extreme pixels would wash out the rest
    im = ax.imshow(levels, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, extend="max" if levels.max() > top else "neither")
    bar.set_label("per-pixel std of the passes (8-bit levels)", fontsize=8)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_uncertainty(output: str | os.PathLike, std_map: np.ndarray, title: str = "") -> tuple[Path, Path]:
    """Write the map beside ``output``: float32 TIFF of the values and a PNG figure with colour bar.

    Both files are written atomically (temporary name, then rename).

    Args:
        output: The denoised image's path (:func:`std_paths` names the two files).
        std_map: ``[H, W]`` float std in [0, 1] intensity units (:func:`channel_rms`).
        title: The figure's title line.

    Returns:
        The two paths written, ``(tiff, png)``.

    Raises:
        MaskdnError: ``"<path>: cannot write (...)"`` (:func:`maskdn.io.atomic_write`).
    """
    import tifffile
    from PIL import Image

    tif, png = std_paths(output)
    values = np.ascontiguousarray(np.asarray(std_map, dtype=np.float32))
    with atomic_write(tif) as tmp:
        tifffile.imwrite(tmp, values, compression="zlib")
    with atomic_write(png) as tmp:
        Image.fromarray(colorbar_figure(values, title)).save(tmp, format="PNG")
    return tif, png


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their mean rank (for Spearman's rho)."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def error_agreement(std_map: np.ndarray, abs_error: np.ndarray, top: float = 0.1) -> dict[str, float]:
    """How well a predicted std map matches the actual absolute error, over the pixels of one image.

    Args:
        std_map: ``[H, W]`` predicted std (any units).
        abs_error: ``[H, W]`` actual absolute error of the estimate (e.g. channel-mean |estimate − clean|).
        top: The fraction of pixels with the largest predicted std for ``top_error_ratio``.

    Returns:
        ``pearson`` (linear correlation), ``spearman`` (rank correlation, ties at their mean rank) and
        ``top_error_ratio``: the mean error over the ``top`` fraction of pixels with the largest std
        divided by the mean error over all pixels (1: no better than chance; higher is better). NaN
        where a map is constant.

    Raises:
        MaskdnError: The two maps differ in shape.
    """
    s = np.asarray(std_map, dtype=np.float64).ravel()
    e = np.asarray(abs_error, dtype=np.float64).ravel()
    if np.shape(std_map) != np.shape(abs_error):
        raise MaskdnError(f"std map {np.shape(std_map)} and error map {np.shape(abs_error)} differ in shape")
    k = max(1, int(round(top * s.size)))
    worst = np.argpartition(-s, k - 1)[:k]
    mean_error = e.mean()
    return {
        "pearson": _pearson(s, e),
        "spearman": _pearson(_ranks(s), _ranks(e)),
        "top_error_ratio": float(e[worst].mean() / mean_error) if mean_error > 0 else float("nan"),
    }
