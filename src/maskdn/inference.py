"""Denoising with a trained :class:`~maskdn.model.MaskedSwinIR`: any input type, any size, bounded memory.

Three layers, each usable on its own:

* :func:`denoise_tensor`, the core, on float batches ``[B, C, H, W]``;
* :func:`denoise`, which takes a NumPy array, a PIL image or a tensor and hands back the same kind of
  object (dtype, layout and range kept; gray stays gray, alpha is passed through untouched);
* :func:`denoise_files`, the batch over image files behind ``maskdn denoise``.

Why the options exist:

* ``passes``: a masked-training model keeps its attention token masking on at test time, so one
  forward pass is one random draw. Averaging ``K`` passes (each drawn from the same seeded generator
  in turn, so the result is reproducible) reduces that variance; a few passes gain about 0.3 dB. A
  model without test-time masking is deterministic and runs once whatever ``K`` is.
* ``self_ensemble``: the classic ×8 geometric ensemble (the 8 flips and rotations, each undone after
  the model, averaged), as in EDSR (Lim et al. 2017) and KAIR's ``utils_model.test_x8``.
* ``tile``: the window attention's buffers grow with the image; overlapping tiles keep the peak
  memory set by the tile size, so a 6000×4000 photo denoises with only the image and two
  accumulators at full resolution. The tile grid is that of SwinIR's ``main_test_swinir.py``; where
  SwinIR averages overlaps uniformly, here they are blended with a linear ramp weight (positive
  everywhere), which hides tile seams.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .devices import module_device, on_device, resolve_device, warn_if_bf16_is_slow
from .errors import MaskdnError, check_int
from .geometry import dihedral, dihedral_inverse
from .io import DEFAULT_MAX_PIXELS, make_output_dir
from .memory import is_out_of_memory, plan_tile
from .denoiser import Denoiser
from .model import MaskedSwinIR

__all__ = ["denoise", "denoise_tensor", "denoise_files", "check_output", "output_is_file", "check_passes", "check_tile_options",
           "model_pass"]

ModelLike = Denoiser | str | os.PathLike | None


# --------------------------------------------------------------------------------------------------
# Core: passes, self-ensemble, tiles
# --------------------------------------------------------------------------------------------------


BORDER_CONTEXT = 8
"""Pixels of context, the border pixels replicated, added around every image and tile before the model.

The network's 3×3 convolutions zero-pad, so without context its outermost pixels drift (a flat white
image came back with corners at 217, a flat black one at 28, on the bundled models). With context the
model sees continuous content up to the border. Measured on 4 Kodak24 photos (kodim01, 05, 13, 23,
one seeded pass, Gaussian noise clipped and 8-bit quantized), PSNR before → after: baseline-small
32.36 → 32.46 dB at σ = 15 and 27.33 → 27.37 at σ = 25, masked-small 30.62 → 30.75 and 27.56 → 27.61,
every image better; the RMSE of the pixels within 4 of the border fell from 8.1 to 6.2 levels
(baseline-small, σ = 15; inside 6.35). Replicated rather than mirrored: Kodak's 1-pixel black edge
lines, mirrored, became thin lines inside the image that masked-small filled in (−0.6 dB on kodim23).
8 = the bundled models' attention window."""

FLAT_WINDOW = 16
"""Side of the windows in which an input that is exactly constant (every channel) is returned as it is.

Noise leaves no 16×16 window exactly constant, so such a window is noise-free and its clean value is
known: the input. The bundled models, which never saw saturated primaries in training (no CBSD432
pixel is within 15 levels of pure red, green or blue), would otherwise shift them (pure red came back
as 236, 9, 8). Images smaller than the window use their own size (at least 4). Noisy saturated colours
are still shifted (noisy pure red comes back near 235, 12, 12 from baseline-small): that needs models
trained on such colours."""


def _keep_flat(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """``y`` with every pixel of ``x`` that lies in an exactly constant window (:data:`FLAT_WINDOW`) taken from ``x``.

    Returns the mask ``[B, 1, H, W]`` too, for the uncertainty (zero there).
    """
    k = min(FLAT_WINDOW, *x.shape[-2:])
    if k < 4:
        return y, None
    xf = x.float()
    hi = F.max_pool2d(xf, k, stride=1)
    lo = -F.max_pool2d(-xf, k, stride=1)
    constant = (hi == lo).all(dim=1, keepdim=True).float()  # [B, 1, H-k+1, W-k+1]: the window's pixels agree
    if not bool(constant.any()):
        return y, None
    flat = F.max_pool2d(F.pad(constant, (k - 1,) * 4), k, stride=1) > 0  # every pixel of such a window
    return torch.where(flat, x.to(y.dtype), y), flat


def model_pass(model: MaskedSwinIR, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One forward pass as denoising runs it: ``model`` on ``x`` grown by :data:`BORDER_CONTEXT`, cropped back.

    Args:
        model: The denoiser.
        x: ``[B, C, H, W]`` float, values in [0, 1].
        generator: For the attention masks of a stochastic model, on ``x``'s device.

    Returns:
        ``[B, C, H, W]``, not clamped.
    """
    b = BORDER_CONTEXT
    H, W = x.shape[-2:]
    return model(F.pad(x, (b,) * 4, mode="replicate"), generator=generator)[..., b : b + H, b : b + W]


def _run_model(
    model: MaskedSwinIR, x: Tensor, passes: int, self_ensemble: bool, generator: torch.Generator | None,
    spread: bool = False,
) -> Tensor:
    """Average of the model over transforms (outer loop) and passes (inner loop) on one batch.

    Each sample is one :func:`model_pass` (the batch grown by :data:`BORDER_CONTEXT` replicated pixels,
    cropped back; replication commutes with the flips and rotations).

    ``spread``: the per-pixel standard deviation over those samples (divided by their count) is
    appended as ``C`` more channels; computed from sums shifted by the first sample (stable in float32).
    """
    n_passes = passes if model.stochastic else 1
    transforms = range(8) if self_ensemble else range(1)
    acc: Tensor | None = None
    first = sq = None
    for k in transforms:
        xt = dihedral(x, k) if k else x
        for _ in range(n_passes):
            y = model_pass(model, xt, generator).to(x.dtype)
            y = dihedral_inverse(y, k) if k else y
            if spread:
                first = y.clone() if first is None else first
                d = y - first
                sq = d * d if sq is None else sq.addcmul_(d, d)
            acc = y if acc is None else acc.add_(y)
    assert acc is not None
    n = len(transforms) * n_passes
    mean = acc if n == 1 else acc.div_(n)
    if not spread:
        return mean
    var = sq.div_(n).sub_((mean - first).square_()).clamp_(min=0)
    return torch.cat([mean, var.sqrt_()], dim=1)


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` along ``length``: every ``stride``, the last flush with the end."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def _ramp(size: int, overlap: int, at_start: bool, at_end: bool, like: Tensor) -> Tensor:
    """1-D blending weight: rises over ``overlap`` pixels at inner edges, 1 elsewhere, positive everywhere.

    Edges on the image border (``at_start`` / ``at_end``) get no ramp: no other tile covers them.
    """
    w = torch.ones(size, dtype=like.dtype, device=like.device)
    if overlap <= 0:
        return w
    ramp = torch.arange(1, overlap + 1, dtype=like.dtype, device=like.device) / (overlap + 1)
    n = min(overlap, size)
    if not at_start:
        w[:n] = torch.minimum(w[:n], ramp[:n])
    if not at_end:
        w[size - n :] = torch.minimum(w[size - n :], ramp[:n].flip(0))
    return w


def check_tile_options(tile: int | None, tile_overlap: int, window_size: int) -> None:
    """Raise :class:`MaskdnError` unless ``tile > tile_overlap >= 0`` and ``tile >= window_size``.

    Args:
        tile: The tile side in pixels, or None for no tiling (then nothing is checked).
        tile_overlap: The overlap of neighbouring tiles in pixels.
        window_size: The model's smallest input side in pixels (``model.size_multiple``: a SwinIR model's
            attention window, 1 for IDF).

    Raises:
        MaskdnError: If ``tile`` or ``tile_overlap`` is not an int (a bool counts as not one),
            ``tile < 1``, ``tile_overlap < 0``, ``tile <= tile_overlap`` or ``tile < window_size``;
            the one-line message names the option and the value.
    """
    if tile is None:
        return
    check_int("tile", tile)
    check_int("tile overlap", tile_overlap, 0)
    if tile <= tile_overlap:
        raise MaskdnError(f"tile ({tile}) must be larger than the tile overlap ({tile_overlap})")
    if tile < window_size:
        raise MaskdnError(f"tile ({tile}) must be at least the model's window size ({window_size})")


def check_passes(passes: int) -> None:
    """Raise :class:`MaskdnError` unless ``passes`` is an integer >= 1.

    Args:
        passes: The number of stochastic forward passes to average.

    Raises:
        MaskdnError: ``"passes must be an integer >= 1, not <value>"`` if ``passes`` is not an int
            (a bool counts as not one) or is < 1.
    """
    check_int("passes", passes)


def denoise_tensor(
    model: MaskedSwinIR,
    x: Tensor,
    *,
    passes: int = 1,
    self_ensemble: bool = False,
    tile: int | None = None,
    tile_overlap: int = 32,
    generator: torch.Generator | None = None,
    progress: bool = False,
    bf16: bool = False,
    uncertainty: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Denoise a float batch ``[B, C, H, W]`` (``C = model.config.in_chans``, values in [0, 1]).

    Runs in eval mode (the model's mode is restored afterwards) under ``torch.inference_mode()``.
    ``passes`` stochastic passes are averaged (one pass if the model is deterministic, i.e.
    ``model.stochastic`` is False in eval mode); ``self_ensemble`` averages the 8 flips/rotations
    of :func:`maskdn.geometry.dihedral` (the ×8 self-ensemble of EDSR / KAIR's ``test_x8``), each
    undone after the model and each with its ``passes``; ``tile`` processes overlapping
    ``tile``×``tile`` tiles (stride ``tile - tile_overlap``, the last one flush with the border, as in
    SwinIR's ``main_test_swinir.py``) blended with a separable linear ramp that rises over
    ``tile_overlap`` pixels at inner tile edges, only along sides longer than the tile; an image that
    fits in one tile is processed exactly as untiled. Every image (and tile) is grown by
    :data:`BORDER_CONTEXT` replicated pixels before the model and cropped after, so its borders are
    denoised like its inside; pixels of exactly constant :data:`FLAT_WINDOW`-sized windows (noise-free, so already
    clean) are returned as they are.

    Args:
        model: The denoiser, on ``x``'s device.
        x: ``[B, C, H, W]`` float tensor (any float dtype), ``C = model.config.in_chans``, values in
            [0, 1]; any ``H`` and ``W`` (the model pads to its window by reflection).
        passes: Stochastic forward passes to average per transform (int >= 1).
        self_ensemble: Average over the 8 flips/rotations (8× the work).
        tile: The tile side in pixels (>= the model's window size), or None to process the whole
            image at once when it fits in memory, else in the largest tiles that fit
            (:func:`maskdn.memory.plan_tile`: the peak is predicted from the size before any work).
        tile_overlap: The overlap of neighbouring tiles in pixels (0 <= ``tile_overlap`` < ``tile``).
        generator: Drives the attention masks in sequence, so a seeded generator gives a
            reproducible result; it must live on ``x``'s device. None: torch's global RNG.
        progress: Show a tqdm bar over the tiles (only when tiling splits the image).
        bf16: Run the network under bfloat16 autocast on ``x``'s device type (within 0.05 dB PSNR of
            float32; for its speed see docs/performance.md). Warns on a CPU without bfloat16 units,
            where it is slower (:func:`maskdn.devices.warn_if_bf16_is_slow`).
        uncertainty: Also return the per-pixel, per-channel standard deviation of the samples
            averaged (the ``passes`` of a stochastic model, times the 8 transforms with
            ``self_ensemble``), divided by their count; tiles blend it with the same weights as the
            image. See :mod:`maskdn.uncertainty`.

    Returns:
        The denoised batch: same shape, dtype and device as ``x``; not clamped. With
        ``uncertainty``: ``(denoised, std)``, ``std`` of the same shape, in the same [0, 1] units.

    Raises:
        MaskdnError: Invalid ``passes`` or tile options (see :func:`check_passes` and
            :func:`check_tile_options`), ``x`` not a 4-D float tensor, NaN or inf in ``x``, ``C`` not
            ``model.config.in_chans`` (raised by the model), or running out of memory all the same
            (``"out of memory denoising a WxH image ...; use smaller tiles (--tile N)"``).
    """
    check_passes(passes)
    check_tile_options(tile, tile_overlap, model.size_multiple)
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise MaskdnError(f"expected a float tensor [B, C, H, W], got {desc}")
    if not bool(torch.isfinite(x).all()):
        raise MaskdnError("the image holds NaN or inf values; refused (replace them first, e.g. numpy.nan_to_num)")
    if bf16:
        warn_if_bf16_is_slow(x.device, "bf16")
    if tile is None:
        tile = plan_tile(model, tuple(x.shape), x.device, tile_overlap)  # None: the whole image fits
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            if tile is None:
                y = _run_model(model, x, passes, self_ensemble, generator, uncertainty)
            else:
                y = _denoise_tiled(model, x, passes, self_ensemble, generator, tile, tile_overlap, progress,
                                   uncertainty)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        where = f"in {tile}x{tile} tiles" if tile else "whole"
        raise MaskdnError(f"out of memory denoising a {x.shape[-1]}x{x.shape[-2]} image {where} on {x.device}; "
                          f"use smaller tiles (--tile {_smaller_tile(tile, x, model.size_multiple)})") from None
    finally:
        model.train(was_training)
    mean, flat = _keep_flat(x, y[:, : x.shape[1]])
    if not uncertainty:
        return mean
    std = y[:, x.shape[1] :]
    return mean, (std if flat is None else std.masked_fill(flat, 0))


def _smaller_tile(tile: int | None, x: Tensor, multiple: int) -> int:
    """A tile side to suggest after running out of memory: half the current one (or of the image)."""
    side = (tile or max(x.shape[-2:])) // 2
    return max(side - side % multiple, multiple, 64)


def _denoise_tiled(
    model: MaskedSwinIR,
    x: Tensor,
    passes: int,
    self_ensemble: bool,
    generator: torch.Generator | None,
    tile: int,
    overlap: int,
    progress: bool,
    spread: bool = False,
) -> Tensor:
    B, C, H, W = x.shape
    if H <= tile and W <= tile:  # one tile is the whole image: no blending, identical to untiled
        return _run_model(model, x, passes, self_ensemble, generator, spread)
    from tqdm.auto import tqdm

    stride = tile - overlap
    ys, xs = _tile_starts(H, tile, stride), _tile_starts(W, tile, stride)
    th, tw = min(tile, H), min(tile, W)
    out = x.new_zeros((B, 2 * C if spread else C, H, W))
    weight = torch.zeros((1, 1, H, W), dtype=x.dtype, device=x.device)
    boxes = [(y0, x0) for y0 in ys for x0 in xs]
    for y0, x0 in tqdm(boxes, desc="tiles", unit="tile", disable=not progress, leave=False):
        y = _run_model(model, x[:, :, y0 : y0 + th, x0 : x0 + tw], passes, self_ensemble, generator, spread)
        wy = _ramp(th, overlap, y0 == 0, y0 + th == H, x)
        wx = _ramp(tw, overlap, x0 == 0, x0 + tw == W, x)
        w = wy[:, None] * wx[None, :]
        out[:, :, y0 : y0 + th, x0 : x0 + tw].add_(y * w)
        weight[:, :, y0 : y0 + th, x0 : x0 + tw].add_(w)
    return out.div_(weight)


# --------------------------------------------------------------------------------------------------
# Any input type
# --------------------------------------------------------------------------------------------------


def _resolve_model(model: ModelLike, device: str | torch.device | None) -> MaskedSwinIR:
    """A model on ``device`` (None: an instance where it is, a loaded one on the CPU), never moving the caller's.

    An instance on another device is copied there (:func:`maskdn.devices.on_device`); a zoo name or path
    (None: the default model) is loaded.
    """
    if isinstance(model, Denoiser):
        return on_device(model, device)
    from .weights import load_model

    return load_model(model, device=resolve_device(device or "cpu"))


def _fit_channels(model: MaskedSwinIR, x: Tensor) -> tuple[Tensor, Any]:
    """Adapt ``[B, C, H, W]`` to the model's channels; returns the input and a function to undo it."""
    C, want = x.shape[1], model.config.in_chans
    if C == want:
        return x, lambda y: y
    if C == 1:  # gray into a colour model: replicate, then average back
        return x.expand(-1, want, -1, -1), lambda y: y.mean(dim=1, keepdim=True)
    if want == 1:  # colour into a gray model: each channel as its own image
        B, _, H, W = x.shape
        return x.reshape(B * C, 1, H, W), lambda y: y.reshape(B, C, H, W)
    raise MaskdnError(f"cannot feed a {C}-channel image to a {want}-channel model")


def _denoise_float(model: MaskedSwinIR, x: Tensor, options: dict) -> Tensor:
    """``denoise_tensor`` on any channel count (1 or the model's).

    With ``options["spread"]`` (a list), the passes' std map ``[B, H, W]`` is appended to that list.
    """
    xin, undo = _fit_channels(model, x)
    sink = options.get("spread")
    if sink is None:
        return undo(denoise_tensor(model, xin, **options))
    from .uncertainty import channel_rms

    y, std = denoise_tensor(model, xin, uncertainty=True, **{k: v for k, v in options.items() if k != "spread"})
    sink.append(channel_rms(undo(std)))
    return undo(y)


def _denoise_torch(model: MaskedSwinIR, image: Tensor, device: str | torch.device, options: dict) -> Tensor:
    if image.ndim not in (3, 4) or image.shape[-3] not in (1, 3):
        raise MaskdnError(f"expected a tensor [C, H, W] or [B, C, H, W] with C = 1 or 3, got {list(image.shape)}")
    if not image.is_floating_point():
        raise MaskdnError(f"expected a float tensor with values in [0, 1], got {image.dtype}")
    x = image.to(device=device, dtype=torch.float32)
    x = x[None] if image.ndim == 3 else x
    y = _denoise_float(model, x, options)
    y = y[0] if image.ndim == 3 else y
    return y.to(device=image.device, dtype=image.dtype)


def _denoise_numpy(model: MaskedSwinIR, image: np.ndarray, device: str | torch.device, options: dict) -> np.ndarray:
    from .io import from_float_rgb, to_float_rgb

    x, info = to_float_rgb(image)  # validates layout and dtype; gray replicated, alpha set aside
    y = _denoise_float(model, x[None].to(device), options)[0]
    out = from_float_rgb(y, info).reshape(image.shape)  # HxWx1 comes back as HxW
    return out.astype(image.dtype, copy=False)  # float16/float64 in, the same out


_PIL_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "F")


def _denoise_pil(model: MaskedSwinIR, image: Any, device: str | torch.device, options: dict) -> Any:
    from PIL import Image

    if image.mode not in _PIL_MODES:
        raise MaskdnError(f"unsupported PIL image mode {image.mode!r} (supported: {', '.join(_PIL_MODES)})")
    out = _denoise_numpy(model, np.asarray(image), device, options)
    result = Image.fromarray(out)
    if result.mode != image.mode:
        result = result.convert(image.mode)
    return result


def denoise(
    image: Any,
    model: ModelLike = None,
    *,
    passes: int = 1,
    self_ensemble: bool = False,
    tile: int | None = None,
    tile_overlap: int = 32,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    bf16: bool = False,
    uncertainty: bool = False,
) -> Any:
    """Denoise ``image`` and return the same kind of object (with ``uncertainty``, and a std map).

    Arrays and PIL images go through :func:`maskdn.io.to_float_rgb` / :func:`maskdn.io.from_float_rgb`:
    integers are scaled to [0, 1] and back (clamped, rounded); floats within [0, 1] are taken as they
    are, floats beyond it mapped linearly from their own range onto [0, 1] and back; either way the
    result is clamped to the input's range. Tensors are denoised in float32 and cast back, not clamped.
    Gray stays gray (replicated into a colour model and averaged back; a colour image into a gray model
    is denoised channel by channel) and an alpha channel (RGBA, gray + alpha) is passed through unchanged.

    Args:
        image: A NumPy array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` or
            ``[H, W, 4]`` (RGBA), uint8 (0–255), uint16 (0–65535) or float (any range, see above); a PIL
            image in mode ``L``, ``LA``, ``RGB``, ``RGBA``, ``I;16`` or ``F``; or a float tensor ``[C, H, W]`` or ``[B, C, H, W]``,
            ``C`` = 1 or 3, values in [0, 1], on any device.
        model: A :class:`MaskedSwinIR` (never moved: it runs where it is, or a copy runs on another
            ``device``), a zoo name or a weights path (loaded with :func:`maskdn.load_model`); None:
            the default zoo model.
        passes: As in :func:`denoise_tensor`.
        self_ensemble: As in :func:`denoise_tensor`.
        tile: As in :func:`denoise_tensor`.
        tile_overlap: As in :func:`denoise_tensor`.
        seed: Seeds a new ``torch.Generator`` on ``device`` for the attention masks, so one seed
            gives one result; None: torch's global RNG.
        device: Where the model runs; the input is copied there and the result copied back. None:
            the device of a given :class:`MaskedSwinIR`, the CPU for a loaded model.
        progress: As in :func:`denoise_tensor`.
        bf16: As in :func:`denoise_tensor`.
        uncertainty: Also return the per-pixel standard deviation of the passes
            (:mod:`maskdn.uncertainty`): needs a model whose attention mask is on at test time and
            ``passes >= 2``.

    Returns:
        The denoised image, of the input's type, dtype, shape, value range and (for tensors) device.
        With ``uncertainty``: ``(denoised, std)``, ``std`` the root mean square over channels of the
        per-channel std, in [0, 1] intensity units: a float32 NumPy array ``[H, W]`` for arrays and
        PIL images, a float32 tensor ``[H, W]`` (or ``[B, H, W]``) on the input's device for tensors.

    Raises:
        MaskdnError: An unsupported input type, PIL mode, array or tensor shape or dtype, a channel
            count the model cannot take, an unknown zoo name or unusable weights file, a ``device``
            this machine lacks (:func:`maskdn.devices.resolve_device`), or invalid options (see
            :func:`denoise_tensor`; ``uncertainty`` with a deterministic model or ``passes < 2``,
            :func:`maskdn.uncertainty.check_uncertainty`).
    """
    from PIL import Image

    if isinstance(image, Tensor):
        convert = _denoise_torch
    elif isinstance(image, np.ndarray):
        convert = _denoise_numpy
    elif isinstance(image, Image.Image):
        convert = _denoise_pil
    else:
        raise MaskdnError(f"cannot denoise a {type(image).__name__}: give a NumPy array, a PIL image or a tensor")
    net = _resolve_model(model, device)
    device = module_device(net)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    options = dict(passes=passes, self_ensemble=self_ensemble, tile=tile, tile_overlap=tile_overlap,
                   generator=generator, progress=progress, bf16=bf16)
    if not uncertainty:
        return convert(net, image, device, options)
    from .uncertainty import check_uncertainty

    check_uncertainty(net, passes)
    options["spread"] = sink = []
    result = convert(net, image, device, options)
    std = sink[0].float()
    if isinstance(image, Tensor):
        return result, (std[0] if image.ndim == 3 else std).to(image.device)
    return result, std[0].cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def output_is_file(output: str | os.PathLike) -> bool:
    """Whether ``output`` names an image file, not a folder: its suffix is an image format Pillow knows
    (``PIL.Image.registered_extensions``) and it is not an existing folder (the rule of :func:`check_output`).

    Args:
        output: An output path of :func:`denoise_files`.

    Returns:
        True for an image file, False for a folder (existing or to create).
    """
    from PIL import Image

    from .io import IMAGE_SUFFIXES

    output = Path(output)
    if output.is_dir():
        return False
    suffix = output.suffix.lower()
    return suffix in {s.lower() for s in IMAGE_SUFFIXES} or suffix in Image.registered_extensions()


def check_output(output: str | os.PathLike, n_inputs: int = 1) -> Path:
    """Refuse, before any work, an ``output`` that :func:`denoise_files` could not write or would lose.

    ``output`` is an image file when its suffix is an image format that Pillow knows
    (``PIL.Image.registered_extensions``) and it is not an existing folder; anything else is a folder.

    Args:
        output: The output file or folder.
        n_inputs: The number of input images.

    Returns:
        ``output`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: ``"<output>: a broken symlink or a symlink loop; ..."``; ``"<output>: cannot write
            .webp images (maskdn writes ...)"`` for an image format :func:`maskdn.io.write_image` does not
            write; ``"<output>: N inputs need an output folder, not an image file"``; or ``"<output>:
            exists and is not a folder"``.
    """
    from .io import IMAGE_SUFFIXES

    output = Path(output)
    if output.is_symlink() and not output.exists():
        raise MaskdnError(f"{output}: a broken symlink or a symlink loop; remove it or choose another output")
    if output_is_file(output):
        if output.suffix.lower() not in {s.lower() for s in IMAGE_SUFFIXES}:
            raise MaskdnError(f"{output}: cannot write {output.suffix} images (maskdn writes {' '.join(IMAGE_SUFFIXES)})")
        if n_inputs != 1:
            raise MaskdnError(f"{output}: {n_inputs} inputs need an output folder, not an image file")
    elif output.exists() and not output.is_dir():
        raise MaskdnError(f"{output}: exists and is not a folder")
    return output


def _output_paths(paths: list[Path], output: Path) -> Iterator[tuple[Path, Path]]:
    """Pairs (input, output path): one file → a named output file, else a folder of same-named files."""
    check_output(output, len(paths))
    if output_is_file(output):
        make_output_dir(output.parent)
        yield paths[0], output
        return
    make_output_dir(output)
    for p in paths:
        yield p, output / p.name


def denoise_files(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: ModelLike = None,
    *,
    progress: bool = True,
    max_pixels: int | None = None,
    **denoise_options: Any,
) -> list[tuple[Path, str]]:
    """Denoise image files (files, folders or globs in ``inputs``) into ``output``; returns the failures.

    The batch behind ``maskdn denoise``. With exactly one input file and an ``output`` ending in an
    image suffix (and not an existing folder), that is the output file; otherwise ``output`` is a
    folder (created with its parents) and each result keeps its input's file name, so its format
    follows the input's suffix (:func:`check_output` refuses an image suffix that cannot be written,
    before any work). Inputs are never overwritten, nor is a symlink loop or broken link replaced.

    Each output comes back as its input went in, or the file is refused before any work on it: its
    header is read first (:func:`maskdn.io.probe_image`, over the pixel limit refused),
    :func:`maskdn.io.check_writable` refuses what the output could not hold as it was (palette,
    bilevel, CMYK, animations; 16 bits or float in JPEG, ...), and a page whose full-resolution buffers
    (:func:`maskdn.memory.full_resolution_bytes`) exceed the available memory is refused. Then every
    page (all pages of a multi-page TIFF) is read upright (:func:`maskdn.io.read_page`), denoised with
    :func:`denoise` (mode, bit depth, sample type and value range kept; tiled automatically when the
    whole would not fit) and written with :func:`maskdn.io.write_pages` (atomically, with the input's
    ICC profile); a file that fails does not stop the batch.

    Args:
        inputs: Files, folders and glob patterns (see :func:`maskdn.io.expand_inputs`); a single
            ``str`` or path-like is one spec.
        output: The output file or folder.
        model: As in :func:`denoise`; loaded once for the whole batch.
        progress: Show tqdm bars over the images (and over the tiles of each).
        max_pixels: The most pixels (width × height) a page may have, checked from the header before
            decoding (a guard against decompression bombs). None: :data:`maskdn.io.DEFAULT_MAX_PIXELS`
            (Pillow's, 89.5 million), or :data:`TILED_MAX_PIXELS` when ``tile`` is given, since tiles
            bound the forward pass's memory.
        **denoise_options: Passed to :func:`denoise`: ``passes``, ``self_ensemble``, ``tile``,
            ``tile_overlap``, ``seed`` (each file starts from it afresh), ``device`` (default: a
            given model's own, else ``"cpu"``), ``bf16``, ``uncertainty`` (then each output's std map
            and its figure are written beside it, :func:`maskdn.uncertainty.write_uncertainty`).

    Returns:
        The failures in input order, as ``(input path, one-line message)``; empty if all succeeded.
        Per-file problems (unreadable input, an output that would overwrite an input or another
        result, a failed write, a :class:`MaskdnError` while denoising) are reported here.

    Raises:
        MaskdnError: Before any file is processed: no matching inputs, an unusable model or device,
            invalid ``passes``, tile options or ``max_pixels``, an ``output`` :func:`check_output` refuses (an image
            format maskdn does not write, several inputs for an image file, a file where a folder
            should be, a broken link or symlink loop), or an output folder that cannot be created.
    """
    from tqdm.auto import tqdm

    from .io import expand_inputs

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = expand_inputs(list(inputs))
    check_output(output, len(paths))  # before the model loads: a wrong output costs nothing
    net = _resolve_model(model, denoise_options.get("device"))
    check_passes(denoise_options.get("passes", 1))
    check_tile_options(denoise_options.get("tile"), denoise_options.get("tile_overlap", 32), net.size_multiple)
    if max_pixels is not None:
        check_int("--max-pixels", max_pixels)
    if denoise_options.get("uncertainty"):
        from .uncertainty import check_uncertainty

        check_uncertainty(net, denoise_options.get("passes", 1))

    input_set = {p.resolve() for p in paths}
    claimed: dict[Path, Path] = {}
    failures: list[tuple[Path, str]] = []
    bar = tqdm(list(_output_paths(paths, Path(output))), unit="image", disable=not progress)
    for src, dst in bar:
        bar.set_postfix_str(src.name, refresh=False)
        try:
            try:
                target = dst.resolve()
            except (OSError, RuntimeError):  # Python < 3.13 raises RuntimeError on a symlink loop
                raise MaskdnError(f"{dst}: a symlink loop; remove it or choose another output") from None
            if target in input_set:
                raise MaskdnError(f"{dst}: would overwrite the input; choose another output")
            if target in claimed:
                raise MaskdnError(f"{dst}: already written from {claimed[target]}; inputs share a file name")
            claimed[target] = src
            _denoise_file(src, dst, net, progress, max_pixels, denoise_options)
        except MaskdnError as e:
            failures.append((src, str(e)))
    bar.close()
    return failures


TILED_MAX_PIXELS = 4 * DEFAULT_MAX_PIXELS
"""The pixel limit of :func:`denoise_files` when tiles are asked for (about 358 million pixels, e.g.
a 180-megapixel panorama): tiles bound the forward pass, leaving the full-resolution buffers."""


def _probe(src: Path, max_pixels: int | None, tiled: bool) -> Any:
    """The input's header under the batch's pixel limit; over it, one line saying how to proceed."""
    from .io import ImageTooLarge, probe_image

    limit = max_pixels if max_pixels is not None else TILED_MAX_PIXELS if tiled else DEFAULT_MAX_PIXELS
    try:
        return probe_image(src, max_pixels=limit)
    except ImageTooLarge as e:
        if max_pixels is None and not tiled:
            raise e.with_hint(f"in tiles (e.g. --tile 1024) the limit is {TILED_MAX_PIXELS:,}, or raise it "
                              "with --max-pixels") from None
        raise e.with_hint("raise the limit with --max-pixels if the image is genuine") from None


def _denoise_file(src: Path, dst: Path, net: Any, progress: bool, max_pixels: int | None, options: dict) -> None:
    """One file of :func:`denoise_files`: header and checks first, then every page, then one atomic write."""
    from .io import check_writable, read_page, write_pages
    from .memory import available_memory, full_resolution_bytes

    header = _probe(src, max_pixels, options.get("tile") is not None)
    check_writable(dst, header)
    uncertainty = options.get("uncertainty")
    if uncertainty and len(header.pages) > 1:
        raise MaskdnError(f"{src}: uncertainty maps of multi-page images are not supported; denoise without it")
    available = available_memory("cpu")
    for p in header.pages:
        need = full_resolution_bytes(p.height, p.width, p.channels, p.dtype.itemsize)
        if available is not None and need > available:
            raise MaskdnError(f"{src}: a {p.width}x{p.height} image needs about {need / 2**30:.1f} GiB at full "
                              f"resolution, and {available / 2**30:.1f} GiB of memory is available")
    pages = []
    for i in range(len(header.pages)):
        try:
            result = denoise(read_page(header, i), net, progress=progress, **options)
        except MaskdnError as e:
            raise MaskdnError(e if str(e).startswith(f"{src}:") else f"{src}: {e}") from None
        if uncertainty:
            from .uncertainty import write_uncertainty

            result, std = result
            write_uncertainty(dst, std, f"{src.name}: std of {options.get('passes', 1)} passes")
        pages.append(result)
    write_pages(dst, pages, icc_profile=header.icc_profile)
