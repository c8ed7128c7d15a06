"""The noise zoo: named, seeded degradations of float RGB images in [0, 1], written ``name:level``.

Every noise is a pure function of (image, level, seed): the same inputs give the same noisy image.
By default the result is clipped to [0, 1] and quantized to 8 bits, as the authors' saved test PNGs
are; ``quantize=False`` keeps the float values (still clipped).

Conventions follow the published protocols so numbers are comparable:

* ``gaussian:σ`` — additive N(0, (σ/255)²) per channel.
* ``poisson:α`` — the authors' convention: quantize to 8 bits, ``v = 2^ceil(log2(#distinct values))``,
  ``P = Poisson(x·v)/v``, output ``x + α·(P − x)``.
* ``speckle:v`` — MATLAB ``imnoise(x,'speckle',v)``: ``x + x·n`` with ``n`` uniform, mean 0, variance v.
* ``saltpepper:d`` — MATLAB ``imnoise(x,'salt & pepper',d)``: each value hit with probability d, half
  set to 0, half to 1.
* ``correlated:σ`` — spatially correlated Gaussian: N(0, (σ/255)²) per channel, 3×3 box-filtered per
  channel (reflect padding), then added; the added std is σ/255/3.
* ``jpeg:q`` — Pillow JPEG round trip of the 8-bit image at integer quality q in [1, 100].
* ``camera:k`` — raw-domain shot + read noise through an inverse/forward camera pipeline
  ("unprocessing", Brooks et al. 2019 style) with fixed parameters; integer level k in 1–5.
* ``mixture:k`` — our versioned (:data:`MIXTURE_VERSION`) composition of poisson, speckle, gaussian and
  salt & pepper; integer level k in 1–5, harder with k (table in :data:`MIXTURE_LEVELS`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .errors import MaskdnError
from .geometry import reflect_pad
from .seeding import derive_seed

__all__ = ["NOISES", "NoiseSpec", "parse_noise", "apply_noise", "noise_seed", "true_sigma", "write_noisy_copies", "MIXTURE_VERSION", "MIXTURE_LEVELS", "CAMERA_LEVELS"]


def _gaussian(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype) * (sigma / 255.0)


def _poisson(x: Tensor, alpha: float, g: torch.Generator) -> Tensor:
    x8 = torch.round(x.clamp(0, 1) * 255.0) / 255.0
    vals = max(2, torch.unique(x8).numel())
    v = 2.0 ** math.ceil(math.log2(vals))
    p = torch.poisson(x8 * v, generator=g) / v
    return x8 + alpha * (p - x8)


def _speckle(x: Tensor, var: float, g: torch.Generator) -> Tensor:
    n = (torch.rand(x.shape, generator=g, dtype=x.dtype) - 0.5) * math.sqrt(12.0 * var)
    return x + x * n


def _saltpepper(x: Tensor, d: float, g: torch.Generator) -> Tensor:
    u = torch.rand(x.shape, generator=g, dtype=x.dtype)
    out = x.clone()
    out[u < d / 2] = 0.0
    out[(u >= d / 2) & (u < d)] = 1.0
    return out


def _pad(x: Tensor, r: int) -> Tensor:
    """Pad the last two dims of a ``[N, C, H, W]`` tensor by ``r``: reflect (replicate if too small)."""
    return reflect_pad(x, r, r, top=r, left=r, too_small="replicate")


def _correlated(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    """Spatially correlated Gaussian noise, level σ on the 0–255 scale.

    ``n ~ N(0, (σ/255)²)`` i.i.d. per value (same draw as ``gaussian:σ``), then each channel is filtered by
    the 3×3 box (mean) filter with reflect padding (size kept), and ``x + box(n)`` is returned. The
    box filter divides the std by 3 (added std σ/255/3) and makes horizontally or vertically adjacent
    values correlated with coefficient 6/9 = 2/3.
    """
    n = torch.randn(x.shape, generator=g, dtype=x.dtype) * (sigma / 255.0)
    h, w = x.shape[-2:]
    n4 = n.reshape(-1, 1, h, w)
    n4 = F.avg_pool2d(_pad(n4, 1), kernel_size=3, stride=1)
    return x + n4.reshape(x.shape)


def _jpeg(x: Tensor, quality: float, g: torch.Generator) -> Tensor:
    """JPEG round trip at integer quality q in [1, 100]; the generator is unused (deterministic).

    The image is clamped and rounded to 8 bits, encoded by Pillow (libjpeg, standard IJG tables scaled
    by q, 4:2:0 chroma subsampling for RGB, no optimization), decoded, and returned as float / 255.
    Accepts ``[3, H, W]`` (RGB), ``[1, H, W]`` or ``[H, W]`` (grayscale).
    """
    del g
    if x.ndim == 2:
        arr = x
    elif x.ndim == 3 and x.shape[0] in (1, 3):
        arr = x.permute(1, 2, 0) if x.shape[0] == 3 else x[0]
    else:
        raise MaskdnError(f"jpeg noise: needs an image [3, H, W], [1, H, W] or [H, W], got {tuple(x.shape)}")
    a8 = torch.round(arr.clamp(0, 1) * 255.0).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(a8).save(buf, format="JPEG", quality=int(quality), subsampling=2, optimize=False)
    buf.seek(0)
    with Image.open(buf) as im:
        out = torch.from_numpy(np.asarray(im.convert("RGB" if a8.ndim == 3 else "L")).copy())
    out = out.to(x.dtype) / 255.0
    if x.ndim == 2:
        return out
    return out.permute(2, 0, 1).contiguous() if x.shape[0] == 3 else out[None]


# ---- camera: fixed "unprocessing" parameters -------------------------------------------------------

#: sRGB (linear, D65) → CIE XYZ.
_RGB2XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
#: CIE XYZ → camera (a published Canon DSLR colour matrix, as used by Brooks et al. 2019).
_XYZ2CAM = torch.tensor(
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]], dtype=torch.float64
)
_m = _XYZ2CAM @ _RGB2XYZ
#: Linear sRGB → camera RGB: ``XYZ2CAM @ RGB2XYZ`` with rows normalized to sum 1 (gray stays gray), ≈
#: [[0.8264, 0.2951, -0.1214], [0.1092, 0.9178, -0.0269], [0.0352, 0.2445, 0.7203]].
RGB2CAM = _m / _m.sum(dim=1, keepdim=True)
del _m
#: Camera RGB → linear sRGB (the forward colour correction matrix), the inverse of :data:`RGB2CAM`.
CAM2RGB = torch.linalg.inv(RGB2CAM)
#: Fixed white balance: overall brightness gain 1.25 (Brooks: 1/0.8), red gain 2.15, blue gain 1.7.
#: Per camera channel total gains (R, G, B) = 1.25 × (2.15, 1, 1.7); unprocessing divides by them.
CAMERA_WB = (1.25 * 2.15, 1.25, 1.25 * 1.7)
#: Level → (shot, read): raw noise variance ``shot·x + read`` on the mosaic (x in [0, 1]). Shot is
#: log-spaced from 1e-4 to 1.2e-2 (Brooks et al.'s sampling range); read follows their fitted relation
#: ``log read = 2.18 · log shot + 1.20`` (without its random term).
CAMERA_LEVELS: dict[int, tuple[float, float]] = {
    1: (1.0e-4, 6.3e-9),
    2: (3.3e-4, 8.6e-8),
    3: (1.1e-3, 1.2e-6),
    4: (3.6e-3, 1.6e-5),
    5: (1.2e-2, 2.2e-4),
}
_GAMMA = 2.2


def _ccm(x: Tensor, m: Tensor) -> Tensor:
    return torch.einsum("ij,jhw->ihw", m.to(x.dtype), x)


def _bayer_masks(h: int, w: int, dtype: torch.dtype) -> Tensor:
    """``[3, H, W]`` 0/1 RGGB site masks: R at (even, even), G at (even, odd) and (odd, even), B at (odd, odd)."""
    yy = torch.arange(h).remainder(2)[:, None]
    xx = torch.arange(w).remainder(2)[None, :]
    r = (yy == 0) & (xx == 0)
    b = (yy == 1) & (xx == 1)
    return torch.stack([r, ~(r | b), b]).to(dtype)


def _demosaic_bilinear(mosaic: Tensor, masks: Tensor) -> Tensor:
    """Bilinear demosaic of an RGGB mosaic ``[H, W]`` → ``[3, H, W]`` (reflect padding keeps Bayer parity)."""
    k_rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=mosaic.dtype) / 4.0
    k_g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], dtype=mosaic.dtype) / 4.0
    weight = torch.stack([k_rb, k_g, k_rb])[:, None]  # [3, 1, 3, 3]
    sparse = (masks * mosaic)[None]  # [1, 3, H, W]
    return F.conv2d(_pad(sparse, 1), weight, groups=3)[0]


def _camera(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Raw sensor noise through a fixed camera pipeline, integer level 1 (mild) to 5 (strong).

    Inverse pipeline (sRGB → raw), all parameters fixed (no random camera sampling):

    1. inverse tone curve (inverse smoothstep): ``0.5 − sin(asin(1 − 2y)/3)``;
    2. inverse gamma: ``y^2.2``;
    3. inverse colour correction: ``RGB2CAM`` (documented above), clipped to [0, 1];
    4. inverse white balance: divide channels by ``CAMERA_WB`` = 1.25 × (2.15, 1, 1.7);
    5. Bayer RGGB mosaic.

    Noise on the mosaic: ``m + N(0, shot·m + read)`` with (shot, read) = ``CAMERA_LEVELS[level]``:

    =====  ========  ========
    level  shot      read
    =====  ========  ========
    1      1.0e-4    6.3e-9
    2      3.3e-4    8.6e-8
    3      1.1e-3    1.2e-6
    4      3.6e-3    1.6e-5
    5      1.2e-2    2.2e-4
    =====  ========  ========

    Then clip to [0, 1] and forward: bilinear demosaic, white balance (× ``CAMERA_WB``, clip), colour
    correction ``CAM2RGB`` (clip), gamma ``max(y, 1e-8)^(1/2.2)``, tone curve ``3y² − 2y³``. Without noise
    the pipeline is the identity up to demosaicking (exact on flat regions). Needs ``[3, H, W]``.
    """
    if x.ndim != 3 or x.shape[0] != 3:
        raise MaskdnError(f"camera noise: needs an RGB image [3, H, W], got {tuple(x.shape)}")
    shot, read = CAMERA_LEVELS[int(level)]
    _, h, w = x.shape
    wb = torch.tensor(CAMERA_WB, dtype=x.dtype)[:, None, None]
    # sRGB → raw
    lin = 0.5 - torch.sin(torch.asin(1.0 - 2.0 * x.clamp(0, 1)) / 3.0)
    lin = lin.clamp(min=1e-8) ** _GAMMA
    cam = _ccm(lin, RGB2CAM).clamp(0, 1) / wb
    masks = _bayer_masks(h, w, x.dtype)
    mosaic = (cam * masks).sum(dim=0)
    # heteroscedastic shot + read noise
    std = torch.sqrt(shot * mosaic.clamp(min=0) + read)
    mosaic = (mosaic + torch.randn(mosaic.shape, generator=g, dtype=x.dtype) * std).clamp(0, 1)
    # raw → sRGB
    cam = (_demosaic_bilinear(mosaic, masks) * wb).clamp(0, 1)
    lin = _ccm(cam, CAM2RGB).clamp(0, 1)
    y = lin.clamp(min=1e-8) ** (1.0 / _GAMMA)
    return 3.0 * y**2 - 2.0 * y**3


# ---- mixture: our definition (the paper did not publish one) ---------------------------------------

#: Version of the mixture definition; bump it whenever :data:`MIXTURE_LEVELS` or the order changes.
MIXTURE_VERSION = 1
#: Level → (poisson α, speckle v, gaussian σ, saltpepper d), applied in that order. Every component grows
#: with the level, so the mixture gets monotonically harder.
MIXTURE_LEVELS: dict[int, tuple[float, float, float, float]] = {
    1: (0.5, 0.005, 5.0, 0.002),
    2: (1.0, 0.010, 10.0, 0.005),
    3: (1.5, 0.020, 15.0, 0.010),
    4: (2.0, 0.030, 20.0, 0.020),
    5: (3.0, 0.050, 25.0, 0.030),
}


def _mixture(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Mixed noise, version 1 (``MIXTURE_VERSION``), integer level 1 (mild) to 5 (strong).

    Four sub-seeds are drawn from the seed's generator (``torch.randint(0, 2**62, (4,))``); each stage
    runs with its own ``torch.Generator`` seeded by one of them, in this order, clipping to [0, 1] after
    each stage (no intermediate quantization):

    =====  ==========  ==========  ===========  ==============
    level  poisson α   speckle v   gaussian σ   saltpepper d
    =====  ==========  ==========  ===========  ==============
    1      0.5         0.005       5            0.002
    2      1.0         0.010       10           0.005
    3      1.5         0.020       15           0.010
    4      2.0         0.030       20           0.020
    5      3.0         0.050       25           0.030
    =====  ==========  ==========  ===========  ==============

    Each stage is exactly the corresponding single noise (``poisson:α``, ``speckle:v``, ``gaussian:σ``,
    ``saltpepper:d``).
    """
    params = MIXTURE_LEVELS[int(level)]
    seeds = torch.randint(0, 2**62, (4,), generator=g).tolist()
    y = x
    for fn, p, s in zip((_poisson, _speckle, _gaussian, _saltpepper), params, seeds):
        y = fn(y, p, torch.Generator().manual_seed(int(s))).clamp(0.0, 1.0)
    return y


@dataclass(frozen=True)
class Noise:
    """One noise family: its transform, the valid level range and a one-line description.

    Attributes:
        fn: ``fn(x, level, generator) → noisy``: float image on the CPU (values in [0, 1]), the level,
            a seeded CPU ``torch.Generator``; returns the same shape, not yet clipped.
        low: Smallest valid level.
        high: Largest valid level.
        doc: One-line description (the level's meaning and unit).
        integer: Whether the level must be a whole number.
    """

    fn: Callable[[Tensor, float, torch.Generator], Tensor]
    low: float
    high: float
    doc: str
    integer: bool = False  # the level must be a whole number


NOISES: dict[str, Noise] = {
    "gaussian": Noise(_gaussian, 0.0, 255.0, "additive N(0, (σ/255)²), level σ on the 0–255 scale"),
    "poisson": Noise(_poisson, 0.0, 10.0, "authors' Poisson: x + α·(Poisson(x·v)/v − x), level α"),
    "speckle": Noise(_speckle, 0.0, 1.0, "MATLAB speckle: x + x·n, n uniform with variance v"),
    "saltpepper": Noise(_saltpepper, 0.0, 1.0, "MATLAB salt & pepper: density d of values set to 0 or 1"),
    "correlated": Noise(_correlated, 0.0, 255.0, "Gaussian σ/255 box-filtered 3×3 per channel (std σ/255/3)"),
    "jpeg": Noise(_jpeg, 1.0, 100.0, "JPEG round trip (Pillow) at integer quality q", integer=True),
    "camera": Noise(_camera, 1.0, 5.0, "raw shot+read noise, fixed camera pipeline, level 1–5", integer=True),
    "mixture": Noise(
        _mixture, 1.0, 5.0, f"poisson+speckle+gaussian+s&p mixture v{MIXTURE_VERSION}, level 1–5", integer=True
    ),
}


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed ``name:level`` noise.

    Attributes:
        name: A key of :data:`NOISES` (lower case).
        level: The level, in the unit of that noise (see the module docstring); ``str()`` gives back
            ``name:level``.
    """

    name: str
    level: float

    def __str__(self) -> str:
        return f"{self.name}:{self.level:g}"


def parse_noise(spec: str) -> NoiseSpec:
    """``"poisson:2"`` → ``NoiseSpec("poisson", 2.0)``; unknown names or bad levels are one-line errors.

    Args:
        spec: ``name:level`` (name case-insensitive, a key of :data:`NOISES`).

    Returns:
        The :class:`NoiseSpec`.

    Raises:
        MaskdnError: ``"{spec}: unknown noise (valid: ...; written name:level)"``, or
            ``"{spec}: level must be a number|an integer in [low, high] for {name}"``.
    """
    name, sep, level_text = spec.partition(":")
    name = name.strip().lower()
    if name not in NOISES:
        raise MaskdnError(f"{spec}: unknown noise (valid: {', '.join(NOISES)}; written name:level)")
    try:
        level = float(level_text) if sep else float("nan")
    except ValueError:
        level = float("nan")
    noise = NOISES[name]
    if not noise.low <= level <= noise.high or (noise.integer and level != math.floor(level)):
        kind = "an integer" if noise.integer else "a number"
        raise MaskdnError(f"{spec}: level must be {kind} in [{noise.low:g}, {noise.high:g}] for {name}")
    return NoiseSpec(name, level)


def apply_noise(x: Tensor, spec: str | NoiseSpec, seed: int = 0, quantize: bool = True) -> Tensor:
    """A noisy copy of ``x``: the noise ``spec`` drawn from a generator seeded with ``seed``, clipped to [0, 1].

    The noise is computed on the CPU in float32 (a generator of its own, so the global RNG is left
    alone and the result is the same on every device) and the result is moved to ``x``'s device.

    Args:
        x: Clean image, float, values in [0, 1]. Shapes: every noise but ``jpeg`` and ``camera`` takes
            any shape (``correlated`` filters the last two dims, ``[..., H, W]``); ``jpeg`` takes
            ``[3, H, W]``, ``[1, H, W]`` or ``[H, W]``; ``camera`` takes ``[3, H, W]`` (RGB) only.
        spec: A noise written ``name:level`` (see :data:`NOISES` for each level's meaning and range)
            or a parsed :class:`NoiseSpec`.
        seed: Seed of the noise (for a test image, :func:`noise_seed`).
        quantize: Round to 8-bit levels (``round(255·y)/255``) as a saved noisy image would be; the
            benchmark's test protocol. Training uses ``False``.

    Returns:
        A tensor of ``x``'s shape, float32, values in [0, 1], on ``x``'s device.

    Raises:
        MaskdnError: An unknown noise or a level out of its range (:func:`parse_noise`), or a shape
            the noise does not take.
    """
    spec = parse_noise(spec) if isinstance(spec, str) else spec
    g = torch.Generator().manual_seed(seed)
    y = NOISES[spec.name].fn(x.detach().float().cpu(), spec.level, g).clamp_(0.0, 1.0)
    if quantize:
        y = torch.round(y * 255.0) / 255.0
    return y.to(x.device)


def true_sigma(condition: str) -> float | None:
    """The std (on the [0, 1] scale) of the added noise of ``condition``, where one is defined.

    ``gaussian:σ`` → σ/255; ``correlated:σ`` → σ/255/3 (the per-value std after the 3×3 box filter);
    every other noise (signal-dependent, impulsive, compression, camera, mixtures, ``real``) → None.
    Clipping and 8-bit quantization of the noisy image are ignored, as papers do.

    Args:
        condition: A noise ``name:level`` or ``"real"``.

    Returns:
        The std on the [0, 1] scale, or None.

    Raises:
        MaskdnError: From :func:`parse_noise` (unknown noise or bad level).
    """
    if condition == "real":
        return None
    spec = parse_noise(condition)
    if spec.name == "gaussian":
        return spec.level / 255.0
    if spec.name == "correlated":
        return spec.level / 255.0 / 3.0
    return None


def noise_seed(seed: int, image: str, noise: str) -> int:
    """A stable seed per (seed, image name, noise): the same noisy image in every run, for every model.

    :func:`maskdn.seeding.derive_seed` of ``(seed, image, noise)``.

    Args:
        seed: The run's base seed.
        image: The image's name (file stem).
        noise: The noise as written, ``name:level``.

    Returns:
        The derived integer seed.
    """
    return derive_seed(seed, image, noise)


def write_noisy_copies(
    inputs: list[str],
    out_dir: str,
    specs: list[str],
    seed: int = 0,
    quantize: bool = True,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Noisy copies of image files as ``out_dir/<name>_<level>/<stem>.png``; returns the failures.

    Each copy keeps its input's bit depth, gray/RGB layout and alpha; gray images get the noise on their
    one channel. The noise of an image depends only on (its file stem, the noise, ``seed``).

    Args:
        inputs: Image files or folders (expanded by :func:`maskdn.io.expand_inputs`).
        out_dir: Output root folder.
        specs: Noises, each ``name:level``.
        seed: Base seed (per image: :func:`noise_seed`).
        quantize: Round the noisy values to 8 bits first, as :func:`apply_noise`.
        progress: Show a tqdm progress bar.

    Returns:
        ``(input path, one-line reason)`` for each copy that failed (unreadable image, unsupported
        shape, folder not creatable); empty when all were written.

    Raises:
        MaskdnError: A bad noise in ``specs`` (:func:`parse_noise`), or what ``expand_inputs`` raises.
    """
    from pathlib import Path

    from tqdm import tqdm

    from .io import expand_inputs, from_float_rgb, read_image, to_float_rgb, write_image

    parsed = [parse_noise(s) for s in specs]
    paths = expand_inputs(inputs)
    failures: list[tuple[str, str]] = []
    jobs = [(p, n) for p in paths for n in parsed]
    for path, spec in tqdm(jobs, desc="noise", unit="image", disable=not progress):
        folder = Path(out_dir) / f"{spec.name}_{spec.level:g}"
        try:
            x, info = to_float_rgb(read_image(path))
            clean = x[:1] if info.gray else x
            noisy = apply_noise(clean, spec, seed=noise_seed(seed, path.stem, str(spec)), quantize=quantize)
            folder.mkdir(parents=True, exist_ok=True)
            write_image(folder / f"{path.stem}.png", from_float_rgb(noisy.expand(3, -1, -1), info))
        except MaskdnError as e:
            failures.append((str(path), str(e)))
        except OSError as e:
            failures.append((str(path), f"{folder}: cannot create ({e.strerror or e})"))
    return failures
