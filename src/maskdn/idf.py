"""IDF: the iterative dynamic filtering denoiser, a rival to masked training on the same protocol.

Kim, Ko, Ali and Kim, "IDF: Iterative Dynamic Filtering Networks for Generalizable Image Denoising"
(ICCV 2025, arXiv 2508.19649; reference code github.com/dongjinkim9/IDF, Apache-2.0). Like masked
training it is trained on CBSD432 with Gaussian σ=15 alone and evaluated on noises it never saw; unlike
it, the network never synthesizes pixels: each step predicts, for every pixel, a 3×3 kernel of
non-negative weights summing to (almost) one and replaces the pixel by that weighted average of its
neighbours. One small block (49,021 parameters) is applied ``iterations`` times with shared weights:

1. **Patches**: the 3×3 neighbourhood of every pixel, at dilation 2 with reflection padding on even
   iterations (0, 2, …) and at dilation 1 with zero padding on odd ones.
2. **Local correlation**: per neighbour, the sum over channels of the product of its standardized
   colour with the centre's (mean and unbiased std over the channels; the sum is not divided by
   ``C − 1``, as in the authors' ``corrcoef``): 9 maps.
3. **Features**: two 3×3 convolutions (``in_chans`` → ``hidden`` → ``hidden``, ReLU, no bias) of the
   current image divided by its root mean square.
4. **Global channel attention** (from the second iteration on): the per-channel mean and unbiased std
   of the previous step's residual (its input minus its output) over the whole image, a 1×1
   convolution, RMS normalization and a two-layer 1×1 MLP with a sigmoid scale the features.
5. **Kernels**: a 3×3 convolution of the RMS-normalized features and correlations gives 9 logits per
   pixel; power normalization ``|l|^α / (Σ|l|^α + 1e-4)`` (α = ``power_alpha``) makes the kernel.
6. **Filtering**: each pixel becomes the kernel-weighted sum of its patch (per channel).

With ``adaptive`` set, the iteration halts early once the image-mean weight of the kernels' centre tap
changes by less than ``halt_threshold`` between two undilated iterations (checked after iterations
3, 5, 7, …), per image here (the authors decide for the whole batch; for one image it is the same).

The network works on images normalized per channel by the statistics of its training set
(``x·s + b`` with ``s = data_sigma / data_std``, ``b = −data_mean·s``; the authors' Lightning module
applies it around the network, their ``configs/models/idfnet.yaml``); :class:`IDFNet` folds it in, so
like every maskdn model it takes and returns images in [0, 1]. It is deterministic, and any size runs
without padding, but two of its statistics are global (the RMS normalizations and the channel
attention), so tiles of an image give slightly different results than the whole image.

Parameter names follow the authors' ``IDFNet`` (``block.feature_extractor.0.weight``, …) so their
checkpoints load after stripping the Lightning prefix ``model.`` (:func:`checkpoint_filter_fn`).
File layout, bottom-up: config, normalizations, the dynamic-filtering block, the network, the
checkpoint filter. The code is written from the paper and the authors' description, not copied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dataclass_io import from_plain_dict, plain_dict
from .errors import MaskdnError, check_int, problem

__all__ = ["IDFConfig", "IDFNet", "checkpoint_filter_fn", "ARCHITECTURE"]

ARCHITECTURE = "idf"
"""The name of this architecture in the weights metadata (``maskdn.architecture``)."""

RMS_EPS = 1e-4
"""Added to the root mean square before dividing (the authors' ``rms_norm``)."""
POWER_EPS = 1e-4
"""Added to the kernel's sum of powers before dividing (the authors' ``power_norm``)."""
CORR_EPS = 1e-4
"""Added to the channel std of a neighbour before standardizing it (the authors' ``corrcoef_pt``)."""


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IDFConfig:
    """Architecture, iteration schedule and input normalization of an :class:`IDFNet`.

    Defaults are the released models' (the authors' ``configs/models/idfnet.yaml``: 10 iterations,
    3×3 kernels, 64 hidden channels, α = 3, halting threshold 0.015, CBSD432's channel statistics).

    Attributes:
        in_chans: Image channels (3, RGB; the normalization has one mean and std per channel).
        hidden_channels: Width of the feature convolutions.
        kernel_size: Side k of the predicted per-pixel kernels (odd); k² taps.
        iterations: Applications of the shared block (the maximum when ``adaptive``).
        dilation: Dilation of the patches on even iterations (0, 2, …); odd ones use 1.
        power_alpha: Exponent of the power normalization of the kernels (> 0).
        adaptive: Halt early when the kernels' centre tap stops changing (see the module docstring).
        halt_threshold: The halting tolerance on the change of the mean centre weight (>= 0).
        data_mean: Per-channel mean of the training images, in [0, 1] units.
        data_std: Per-channel standard deviation of the training images (> 0), in [0, 1] units.
        data_sigma: The std the normalized images are given (the authors' ``sigma_data``).

    Raises:
        MaskdnError: ``"invalid IDFConfig: ..."`` listing every problem.
    """

    in_chans: int = 3
    hidden_channels: int = 64
    kernel_size: int = 3
    iterations: int = 10
    dilation: int = 2
    power_alpha: float = 3.0
    adaptive: bool = False
    halt_threshold: float = 0.015
    data_mean: tuple[float, ...] = (0.36187348, 0.4361255, 0.4335091)
    data_std: tuple[float, ...] = (0.19088039, 0.19967876, 0.21309015)
    data_sigma: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_mean", tuple(float(v) for v in self.data_mean))
        object.__setattr__(self, "data_std", tuple(float(v) for v in self.data_std))
        problems = []
        for name in ("in_chans", "hidden_channels", "kernel_size", "iterations", "dilation"):
            problems += problem(check_int, name, getattr(self, name))
        if isinstance(self.kernel_size, int) and self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd, not {self.kernel_size}")
        if not self.power_alpha > 0:
            problems.append(f"power_alpha must be > 0, not {self.power_alpha}")
        if not self.halt_threshold >= 0:
            problems.append(f"halt_threshold must be >= 0, not {self.halt_threshold}")
        if not isinstance(self.adaptive, bool):
            problems.append(f"adaptive must be true or false, not {self.adaptive!r}")
        if len(self.data_mean) != self.in_chans or len(self.data_std) != self.in_chans:
            problems.append(f"data_mean and data_std need {self.in_chans} values each (one per channel)")
        if not all(s > 0 for s in self.data_std) or not self.data_sigma > 0:
            problems.append("data_std and data_sigma must be > 0")
        if problems:
            raise MaskdnError("invalid IDFConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists).

        Returns:
            ``{field name: value}`` for every field.
        """
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IDFConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped.

        Args:
            d: ``{field name: value}``; missing fields take their defaults.

        Returns:
            The validated :class:`IDFConfig`.

        Raises:
            MaskdnError: ``"unknown IDFConfig field(s): ... (valid: ...)"``, or ``"invalid IDFConfig: ..."``.
        """
        return from_plain_dict(cls, d)


# --------------------------------------------------------------------------------------------------
# Normalizations
# --------------------------------------------------------------------------------------------------


def rms_normalize(x: Tensor) -> Tensor:
    """``x`` divided per sample by (its root mean square + :data:`RMS_EPS`), in float32.

    Args:
        x: ``[B, ...]`` (any float dtype).

    Returns:
        ``[B, ...]`` float32; each sample's root mean square is close to 1.
    """
    x = x.float()
    rms = x.square().mean(dim=tuple(range(1, x.ndim)), keepdim=True).sqrt()
    return x / (rms + RMS_EPS)


def power_normalize(logits: Tensor, alpha: float, dim: int = 1) -> Tensor:
    """``|l|^α / (Σ |l|^α + POWER_EPS)`` along ``dim``: non-negative weights summing to just under 1.

    Args:
        logits: Kernel logits, e.g. ``[B, k², H, W]``.
        alpha: The exponent (> 0).
        dim: The taps' dimension.

    Returns:
        The kernels, same shape, float32.
    """
    p = logits.float().abs().pow(alpha)
    return p / (p.sum(dim=dim, keepdim=True) + POWER_EPS)


@torch.no_grad()
def local_correlation(taps: list[Tensor], center: int) -> Tensor:
    """Correlation over the channels of every neighbour's colour with the centre's (no gradient, as the
    authors' ``compute_local_correlation``: training does not reach the image through it).

    Each neighbour's colour vector is standardized over the ``C`` channels (mean removed, divided by
    the unbiased std + :data:`CORR_EPS`); the map of a neighbour is the dot product of its standardized
    vector with the centre's (not divided by ``C − 1``, as in the authors' ``corrcoef_pt``).

    Args:
        taps: ``k²`` neighbour images ``[B, C, H, W]`` (``C`` >= 2), e.g. from
            :meth:`DynamicFilterBlock.taps`.
        center: Index of the centre tap, ``k² // 2``.

    Returns:
        ``[B, k², H, W]`` float32, values in about [−(C−1), C−1].
    """
    c = taps[0].shape[1]

    def standardized(v: Tensor) -> Tensor:
        d = v.float() - v.float().mean(dim=1, keepdim=True)
        return d / (d.square().sum(dim=1, keepdim=True).div_(c - 1).sqrt_().add_(CORR_EPS))

    ref = standardized(taps[center])
    # tap by tap: an image of C channels at a time stays in cache (8x faster than one 5-D broadcast)
    return torch.cat([(standardized(v) * ref).sum(dim=1, keepdim=True) for v in taps], dim=1)


# --------------------------------------------------------------------------------------------------
# The dynamic-filtering block
# --------------------------------------------------------------------------------------------------


class GlobalChannelAttention(nn.Module):
    """Scales features by a gate computed from the global statistics of the previous residual.

    Args:
        in_chans: Channels of the residual (the image's).
        hidden: Channels of the features to scale.
    """

    def __init__(self, in_chans: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * in_chans, 2 * in_chans, 1, bias=False)
        self.attention = nn.Sequential(
            nn.Conv2d(2 * in_chans, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1, bias=False),
            nn.Sigmoid(),
        )

    def gate(self, residual: Tensor) -> Tensor:
        """The per-sample, per-channel gate.

        Args:
            residual: ``[B, in_chans, H, W]``, the previous step's input minus its output.

        Returns:
            ``[B, hidden, 1, 1]``, values in (0, 1).
        """
        r = residual.float()
        stats = torch.cat([r.mean(dim=(2, 3), keepdim=True), r.std(dim=(2, 3), keepdim=True)], dim=1)
        return self.attention(rms_normalize(self.conv(stats)))


class DynamicFilterBlock(nn.Module):
    """One step of IDF: predict a k×k kernel per pixel and filter the image with it.

    Module names follow the authors' ``DIDBlock`` (``feature_extractor``, ``gca``,
    ``kernel_predictor``), so their weights load unchanged.

    Args:
        config: The architecture.
    """

    def __init__(self, config: IDFConfig) -> None:
        super().__init__()
        c, h, k = config.in_chans, config.hidden_channels, config.kernel_size
        self.kernel_size, self.dilation, self.power_alpha = k, config.dilation, config.power_alpha
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(c, h, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(h, h, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.kernel_predictor = nn.Conv2d(h + k * k, k * k, 3, padding=1, bias=False)
        self.gca = GlobalChannelAttention(c, h)

    def taps(self, x: Tensor, dilated: bool) -> list[Tensor]:
        """The k×k neighbourhood of every pixel, as ``k²`` shifted views of the padded image.

        Dilated: taps ``dilation`` apart, borders padded by reflection; else adjacent taps, zero padding
        (the authors' choice for each).

        Args:
            x: The image ``[B, C, H, W]``.
            dilated: Which of the two neighbourhoods.

        Returns:
            ``k²`` views ``[B, C, H, W]`` (``x``'s dtype); tap ``t`` is the neighbour at row offset
            ``(t // k − k // 2)·d`` and column offset ``(t % k − k // 2)·d``, ``d`` the dilation.
        """
        H, W = x.shape[-2:]
        k, d = self.kernel_size, self.dilation if dilated else 1
        pad = d * (k - 1) // 2
        src = F.pad(x, (pad,) * 4, mode="reflect" if dilated else "constant")
        return [src[..., i * d : i * d + H, j * d : j * d + W] for i in range(k) for j in range(k)]

    def forward(self, x: Tensor, residual: Tensor | None, dilated: bool) -> tuple[Tensor, Tensor]:
        """One filtering step on a normalized image.

        The kernel predictor's input (features and correlations side by side) is never built: its
        convolution is the sum of one over the features and one over the correlations, divided by
        their joint RMS afterwards (the same function, as the convolution is linear and the RMS one
        number per image; it saves a copy and a division of 73 maps).

        Args:
            x: The current normalized image ``[B, C, H, W]``.
            residual: The previous step's input minus output ``[B, C, H, W]``, or None on the first step.
            dilated: Use the dilated neighbourhood (even iterations).

        Returns:
            ``(filtered [B, C, H, W] float32, kernels [B, k², H, W] float32)``.
        """
        k2 = self.kernel_size**2
        taps = self.taps(x, dilated)
        corr = local_correlation(taps, k2 // 2)
        features = self.feature_extractor(rms_normalize(x).to(x.dtype).contiguous(memory_format=torch.channels_last))
        if residual is not None:
            features = features * self.gca.gate(residual).to(features.dtype)
        n = features.shape[1]
        w = self.kernel_predictor.weight
        logits = F.conv2d(features, w[:, :n], padding=1).float() + F.conv2d(corr, w[:, n:].float(), padding=1)
        rms = ((_sum_squares(features) + _sum_squares(corr)) / (features[0].numel() + corr[0].numel())).sqrt()
        kernels = power_normalize(logits.contiguous().div_(rms + RMS_EPS), self.power_alpha)
        filtered = taps[0].float() * kernels[:, :1]
        for t in range(1, k2):  # tap by tap (see local_correlation)
            filtered.addcmul_(taps[t].float(), kernels[:, t : t + 1])
        return filtered, kernels


def _sum_squares(x: Tensor) -> Tensor:
    """Per-sample sum of squares of ``[B, ...]`` in float32: ``[B, 1, 1, 1]``."""
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True, dtype=torch.float32).square()


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class IDFNet(nn.Module):
    """The IDF denoiser on [0, 1] images: normalize, iterate the shared block, de-normalize.

    ``forward(x)`` maps ``[B, in_chans, H, W]`` images (values in [0, 1]; any H, W >= 3) to denoised
    images of the same shape, not clamped. Deterministic: ``generator`` is accepted for the common
    model interface of :mod:`maskdn.denoiser` and ignored. Kim et al., ICCV 2025 (see the module
    docstring).

    Args:
        config: The architecture; None gives ``IDFConfig()`` (the released models').
    """

    stochastic = False
    """IDF draws nothing at test time: one pass is the result (:mod:`maskdn.denoiser`)."""
    size_multiple = 1
    """Any image size runs unpadded (:mod:`maskdn.denoiser`)."""

    def __init__(self, config: IDFConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IDFConfig()
        std = torch.tensor(config.data_std, dtype=torch.float32)
        scale = torch.tensor(config.data_sigma, dtype=torch.float32) / std
        shift = -torch.tensor(config.data_mean, dtype=torch.float32) * scale
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.block = DynamicFilterBlock(config)

    def _check(self, x: Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_chans:
            raise MaskdnError(f"expected input [B, {c.in_chans}, H, W], got {list(x.shape)}")
        reach = c.dilation * (c.kernel_size - 1) // 2
        if min(x.shape[-2:]) <= reach:
            raise MaskdnError(f"IDF needs images of at least {reach + 1}×{reach + 1} pixels, got {list(x.shape[-2:])}")

    def forward_normalized(
        self, x: Tensor, iterations: int | None = None, adaptive: bool | None = None
    ) -> tuple[Tensor, int]:
        """Iterate the block on a normalized image (the authors' ``IDFNet.forward``).

        Args:
            x: ``[B, in_chans, H, W]``, normalized (``x·scale + shift`` of a [0, 1] image).
            iterations: Iterations to run at most; None: ``config.iterations``.
            adaptive: Halt early per image (module docstring); None: ``config.adaptive``.

        Returns:
            ``(output [B, in_chans, H, W] float32, iterations run)``; with halting, an image that has
            halted keeps the output of the iteration at which it did.
        """
        c = self.config
        iterations = c.iterations if iterations is None else check_int("iterations", iterations)
        adaptive = c.adaptive if adaptive is None else adaptive
        center = c.kernel_size**2 // 2
        out, residual = x, None
        prev_center: Tensor | None = None  # image-mean centre weight of the last undilated step
        halted = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        done = 0
        for i in range(iterations):
            filtered, kernels = self.block(out, residual, dilated=i % 2 == 0)
            done = i + 1
            if adaptive and bool(halted.any()):
                keep = halted.view(-1, 1, 1, 1)
                filtered = torch.where(keep, out.float(), filtered)
            residual = out.float() - filtered
            out = filtered.to(x.dtype)
            if adaptive and i % 2 == 1:
                mean_center = kernels[:, center].mean(dim=(1, 2))
                if i > 1 and prev_center is not None:
                    halted |= (mean_center - prev_center).abs() < c.halt_threshold
                    if bool(halted.all()):
                        break
                prev_center = mean_center
        return out.float(), done

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, *, iterations: int | None = None,
        adaptive: bool | None = None,
    ) -> Tensor:
        """Denoise ``x``: normalize, iterate, de-normalize.

        Args:
            x: Images ``[B, in_chans, H, W]``, float, values in [0, 1], H and W > the dilated reach
                (``dilation·(kernel_size−1)/2``, 2 for the released models).
            generator: Ignored (IDF is deterministic); accepted for the common model interface.
            iterations: Iterations to run at most; None: ``config.iterations``.
            adaptive: Halt early; None: ``config.adaptive``.

        Returns:
            ``[B, in_chans, H, W]``, ``x``'s dtype, not clamped.

        Raises:
            MaskdnError: ``"expected input [B, in_chans, H, W], got [...]"``, or an image too small.
        """
        self._check(x)
        scale, shift = self.scale.to(x.dtype), self.shift.to(x.dtype)
        y, _ = self.forward_normalized(x * scale + shift, iterations, adaptive)
        return ((y - self.shift) / self.scale).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Foreign checkpoints
# --------------------------------------------------------------------------------------------------

PREFIXES = ("model.", "module.", "_orig_mod.")
"""Key prefixes stripped from the authors' checkpoints: their Lightning module's attribute
(``model.``), DDP (``module.``) and ``torch.compile`` (``_orig_mod.``)."""


def checkpoint_filter_fn(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt the authors' checkpoint (or its ``state_dict``) to :class:`IDFNet` keys.

    Unwraps a ``state_dict`` entry (a Lightning checkpoint) and strips the prefixes of
    :data:`PREFIXES` (repeatedly, in any order); keys are otherwise the authors' own.

    Args:
        state_dict: ``{key: tensor}``, possibly nested under ``"state_dict"``.

    Returns:
        ``{IDFNet key: tensor}``; non-tensor entries dropped.
    """
    if isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            continue
        stripped = True
        while stripped:
            stripped = False
            for p in PREFIXES:
                if key.startswith(p):
                    key, stripped = key[len(p) :], True
        out[key] = value
    return out


def looks_like_idf(state_dict: dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` (after :func:`checkpoint_filter_fn`) holds IDF's block.

    Args:
        state_dict: ``{key: tensor}`` with :class:`IDFNet` key names.

    Returns:
        True when it has the kernel predictor and the feature extractor.
    """
    return {"block.kernel_predictor.weight", "block.feature_extractor.2.weight"} <= set(state_dict)


def infer_config(state_dict: dict[str, Tensor]) -> IDFConfig:
    """The architecture of an IDF ``state_dict``; the iteration schedule and normalization keep the defaults.

    Args:
        state_dict: ``{IDFNet key: tensor}`` (after :func:`checkpoint_filter_fn`).

    Returns:
        ``IDFConfig`` with ``in_chans``, ``hidden_channels`` and ``kernel_size`` read off the tensors.

    Raises:
        MaskdnError: ``"not an IDF state dict (...)"``.
    """
    try:
        hidden, c = state_dict["block.feature_extractor.0.weight"].shape[:2]
        taps = state_dict["block.kernel_predictor.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise MaskdnError(f"not an IDF state dict ({e})") from None
    k = round(taps**0.5)
    defaults = IDFConfig()
    if c != defaults.in_chans:
        raise MaskdnError(f"not a supported IDF state dict ({c} input channels; the normalization has {defaults.in_chans})")
    return dataclasses.replace(defaults, hidden_channels=int(hidden), kernel_size=int(k))
