"""Feature statistics of denoisers under several noises: histograms, distances to the reference, CKA.

Chen et al. (CVPR 2023, Fig. 2 and 7) show that an unmasked model's internal features are distributed
very differently for Gaussian, speckle, Poisson and mixed noise, while the masked model's features look
alike whatever the noise. :func:`analyze` measures that on any models and images:

* every model sees the same noisy images (pure functions of image name, noise and seed, as in
  :mod:`maskdn.generalization`), center-cropped to keep it fast;
* features are taken at the named points of :meth:`MaskedSwinIR.forward_intermediates` (``embed``,
  ``group{i}``, ``body``) on a fixed, seeded random subset of token positions per image: the *same*
  positions under every noise, so the features of one token under two noises can be compared;
* stochastic (attention-masked) models run under a generator seeded per image, the same for every
  noise, so the differences come from the noise, not from the mask draw;
* per model and layer, one histogram per noise on bins shared across noises: ``bins`` equal bins over
  the reference noise's robust range (quantiles ``q`` and ``1 − q``, widened by ``margin`` of its
  width on each side) plus an underflow and an overflow bin;
* how far each noise's histogram is from the reference's: the Wasserstein-1 distance
  (:func:`wasserstein1`; also divided by the reference's std, ``w1_std``, comparable across layers and
  models) and the Jensen–Shannon divergence (:func:`jensen_shannon`, in bits, in [0, 1]; a divergence,
  not a distance: its square root is the metric); plus the std, excess kurtosis and outlier fraction
  (mass outside the reference range) of each distribution;
* linear CKA (:func:`linear_cka`, Kornblith et al. 2019) between the token features under each noise
  and under the reference (1 = the same representation up to rotation and scale).

Nothing holds whole feature maps beyond one forward pass: the CKA statistics are streamed (sums and
``C×C`` cross-products), histograms are counts; only the reference's sampled features are kept
(``images × layers × tokens × channels`` floats) to fix the bins and to pair with the other noises.

Outputs (written atomically): ``analysis.json`` (everything, histograms included),
``histograms_<model>.png`` (a panel per layer, noises overlaid), ``cka.png`` (CKA against the layer, a
line per noise, a panel per model) and ``summary.md`` (means over the non-reference noises).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .errors import MaskdnError, check_int
from .datasets import load_dataset
from .devices import on_device, resolve_device
from .geometry import center_crop
from .io import make_output_dir
from .model import MaskedSwinIR
from .noise import apply_noise, noise_seed, parse_noise
from .seeding import derive_seed

__all__ = [
    "DEFAULT_NOISES",
    "REFERENCE_NOISE",
    "Histogram",
    "analyze",
    "histogram_edges",
    "jensen_shannon",
    "linear_cka",
    "mean_over_noises",
    "plot_cka",
    "plot_histograms",
    "summary_markdown",
    "wasserstein1",
    "write_outputs",
]

FORMAT = "maskdn-analysis/1"
#: The training noise of the paper's models: every other noise is compared with it.
REFERENCE_NOISE = "gaussian:15"
#: The default noises: the reference, a stronger Gaussian, and the paper's unseen noises.
DEFAULT_NOISES: list[str] = [
    "gaussian:15", "gaussian:50", "poisson:2", "speckle:0.03", "saltpepper:0.02", "mixture:3",
]

ModelSource = str | os.PathLike | MaskedSwinIR | tuple[str, Any]


# --------------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------------


def _cka_from_centered(kxy: np.ndarray, kxx: np.ndarray, kyy: np.ndarray) -> float:
    """``‖Kxy‖² / (‖Kxx‖ ‖Kyy‖)`` (Frobenius) from centered cross-products ``Xcᵀ Yc``, ``Xcᵀ Xc``, ``Ycᵀ Yc``."""
    denom = float(np.linalg.norm(kxx) * np.linalg.norm(kyy))
    if not denom > 0:
        return math.nan  # a constant representation: CKA is undefined
    return float(np.sum(kxy * kxy) / denom)


def linear_cka(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    """Linear CKA between two representations of the same ``n`` examples, ``[n, d1]`` and ``[n, d2]``.

    ``CKA = ‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F)`` with column-centered ``Xc``, ``Yc`` (Kornblith et al.,
    ICML 2019), in float64. It is 1 for identical inputs, invariant to orthogonal transforms and
    isotropic scaling of either side, and near 0 for independent features (bias ~ d/n). NaN when a side
    is constant.

    Args:
        x: ``[n, d1]`` array or tensor (any real dtype, converted to float64; a tensor may be on any device).
        y: ``[n, d2]`` array or tensor, the same ``n`` examples in the same order.

    Returns:
        The CKA in [0, 1]; NaN when a side is constant.

    Raises:
        MaskdnError: ``"linear_cka: needs [n, d1] and [n, d2] with the same n >= 2, got <shapes>"``.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 8))
    >>> round(linear_cka(x, 3 * x), 6)
    1.0
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise MaskdnError(f"linear_cka: needs [n, d1] and [n, d2] with the same n >= 2, got {x.shape} and {y.shape}")
    xc, yc = x - x.mean(0), y - y.mean(0)
    return _cka_from_centered(yc.T @ xc, xc.T @ xc, yc.T @ yc)


class _CrossMoments:
    """Streamed sums for the linear CKA between a fixed reference ``X`` and ``Y`` over batches of rows."""

    def __init__(self, dx: int, dy: int) -> None:
        self.n = 0
        self.sx, self.sy = np.zeros(dx), np.zeros(dy)
        self.xx, self.yy, self.yx = np.zeros((dx, dx)), np.zeros((dy, dy)), np.zeros((dy, dx))

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.yx += y.T @ x

    def cka(self) -> float:
        """The linear CKA of all rows seen, equal to :func:`linear_cka` on their concatenation."""
        if self.n < 2:
            return math.nan
        mx, my = self.sx / self.n, self.sy / self.n
        kxx = self.xx - self.n * np.outer(mx, mx)
        kyy = self.yy - self.n * np.outer(my, my)
        kyx = self.yx - self.n * np.outer(my, mx)
        return _cka_from_centered(kyx, kxx, kyy)


# --------------------------------------------------------------------------------------------------
# Histograms on shared bins and their distances
# --------------------------------------------------------------------------------------------------


def histogram_edges(values: np.ndarray | Tensor, bins: int = 100, q: float = 0.001, margin: float = 0.25) -> np.ndarray:
    """``bins + 1`` equal-width edges over the robust range of ``values``.

    The range is the ``q`` to ``1 − q`` quantiles, widened by ``margin`` of its width on each side (a
    degenerate range becomes ``±0.5`` around its value). Values outside fall into the outlier bins of
    :class:`Histogram`.

    Args:
        values: Array or tensor of any shape (flattened, converted to float64; non-finite values ignored).
        bins: The number of finite bins, >= 1.
        q: The lower quantile of the robust range, in [0, 0.5).
        margin: The widening on each side, as a fraction of the range's width, >= 0.

    Returns:
        Float64 ``[bins + 1]`` increasing edges, in the units of ``values``.

    Raises:
        MaskdnError: ``"histogram_edges: needs bins >= 1, 0 <= q < 0.5, margin >= 0 (got ...)"`` or
            ``"histogram_edges: no finite values"``.
    """
    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if bins < 1 or not 0 <= q < 0.5 or margin < 0:
        raise MaskdnError(f"histogram_edges: needs bins >= 1, 0 <= q < 0.5, margin >= 0 (got {bins}, {q}, {margin})")
    if v.size == 0:
        raise MaskdnError("histogram_edges: no finite values")
    lo, hi = (float(t) for t in np.quantile(v, [q, 1 - q]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = hi - lo
    return np.linspace(lo - margin * width, hi + margin * width, bins + 1)


class Histogram:
    """Counts of values on fixed finite ``edges`` plus an underflow and an overflow bin.

    ``counts`` has ``len(edges) + 1`` entries: ``[< edges[0], bin 0, ..., bin n−1, >= edges[-1]]``.
    The sums of the outlier values, of ``v``, ``v²``, ``v³`` and ``v⁴`` (shifted by ``center`` for
    accuracy) are kept too, for the outliers' means (see :meth:`support`) and for the moments.

    Args:
        edges: At least two strictly increasing finite bin edges (float64 ``[n + 1]``).
        center: The shift of the power sums (e.g. the reference's mean), in value units.

    Attributes:
        edges: Float64 ``[n + 1]``.
        counts: Int64 ``[n + 2]``: underflow, the ``n`` bins, overflow.
        tail_sums: Float64 ``[2]``: sums of the underflow and of the overflow values.
        center: The shift of ``power_sums``.
        power_sums: Float64 ``[4]``: ``Σ(v − center)^k``, ``k = 1..4``.

    Raises:
        MaskdnError: ``"Histogram: edges must be increasing, at least two"``.
    """

    def __init__(self, edges: np.ndarray | Sequence[float], center: float = 0.0) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or not np.all(np.diff(self.edges) > 0):
            raise MaskdnError("Histogram: edges must be increasing, at least two")
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.tail_sums = np.zeros(2)
        self.center = float(center)
        self.power_sums = np.zeros(4)  # Σ(v−c)^k, k = 1..4

    def add(self, values: np.ndarray | Tensor) -> Histogram:
        """Count ``values`` (any shape; non-finite values are ignored).

        Args:
            values: Array or tensor of any shape and real dtype (converted to float64; any device).

        Returns:
            This histogram, updated in place.
        """
        v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        idx = np.searchsorted(self.edges, v, side="right")  # 0: underflow, len(edges): overflow
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.tail_sums += (v[idx == 0].sum(), v[idx == self.edges.size].sum())
        d = v - self.center
        d2 = d * d
        self.power_sums += (d.sum(), d2.sum(), (d2 * d).sum(), (d2 * d2).sum())
        return self

    @property
    def total(self) -> int:
        """The number of values counted (outlier bins included)."""
        return int(self.counts.sum())

    def probabilities(self) -> np.ndarray:
        """The counts as a probability vector (outlier bins included).

        Returns:
            Float64 ``[len(edges) + 1]`` summing to 1; all zeros for an empty histogram.
        """
        t = self.total
        return self.counts / t if t else np.zeros(self.counts.size)

    def support(self) -> np.ndarray:
        """Where each bin's mass sits: finite bins at their centers, outliers at their own mean value.

        Returns:
            Float64 ``[len(edges) + 1]`` positions in value units; an empty outlier bin sits at its edge.
        """
        e = self.edges
        under = self.tail_sums[0] / self.counts[0] if self.counts[0] else e[0]
        over = self.tail_sums[1] / self.counts[-1] if self.counts[-1] else e[-1]
        return np.concatenate([[under], (e[:-1] + e[1:]) / 2, [over]])

    def density(self) -> np.ndarray:
        """Probability density over the finite bins (what the plots draw).

        Returns:
            Float64 ``[len(edges) − 1]``: probability / bin width, per value unit (outlier mass excluded).
        """
        return self.probabilities()[1:-1] / np.diff(self.edges)

    def moments(self) -> dict[str, float]:
        """``mean``, ``std``, excess ``kurtosis`` (0 for a Gaussian) and ``outliers`` (outlier-bin mass).

        Returns:
            ``{"mean", "std", "kurtosis", "outliers"}``: exact moments of all counted values (from the
            power sums, not the bins; population std), ``outliers`` in [0, 1]. All NaN when empty;
            ``kurtosis`` NaN for zero variance.
        """
        n = self.total
        if n == 0:
            return {"mean": math.nan, "std": math.nan, "kurtosis": math.nan, "outliers": math.nan}
        m1, m2, m3, m4 = self.power_sums / n  # raw moments about `center`
        var = m2 - m1 * m1
        c4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        return {
            "mean": self.center + m1,
            "std": math.sqrt(max(var, 0.0)),
            "kurtosis": c4 / (var * var) - 3.0 if var > 0 else math.nan,
            "outliers": float((self.counts[0] + self.counts[-1]) / n),
        }


def _check_pair(p: Histogram, q: Histogram) -> None:
    if p.edges.shape != q.edges.shape or not np.allclose(p.edges, q.edges):
        raise MaskdnError("histograms must share their bins to be compared")
    if not p.total or not q.total:
        raise MaskdnError("cannot compare an empty histogram")


def wasserstein1(p: Histogram, q: Histogram) -> float:
    """Wasserstein-1 (earth mover's) distance between two histograms on the same bins, in value units.

    Each bin's mass sits at :meth:`Histogram.support` (bin centers; outlier bins at the mean of their
    values), and ``W1 = ∫ |F_p − F_q|`` over the merged support points. 0 for identical histograms; a
    shift of the values by ``s`` (within the range) moves it by about ``|s|``. This is the 1-D
    Wasserstein-1 definition of :func:`scipy.stats.wasserstein_distance` (CDF form).

    Args:
        p: A histogram.
        q: A histogram on the same edges.

    Returns:
        The distance, >= 0, in the units of the histogrammed values.

    Raises:
        MaskdnError: ``"histograms must share their bins to be compared"`` or ``"cannot compare an
            empty histogram"``.
    """
    _check_pair(p, q)
    xs = np.concatenate([p.support(), q.support()])
    ws = np.concatenate([p.probabilities(), -q.probabilities()])
    order = np.argsort(xs, kind="stable")
    cdf_gap = np.cumsum(ws[order])[:-1]
    return float(np.sum(np.abs(cdf_gap) * np.diff(xs[order])))


def jensen_shannon(p: Histogram, q: Histogram) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two histograms on the same bins.

    ``JS = ½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q)/2``, outlier bins included. 0 for identical histograms,
    1 for disjoint ones. (Lin 1991; the square of :func:`scipy.spatial.distance.jensenshannon` with
    ``base=2``.)

    Args:
        p: A histogram.
        q: A histogram on the same edges.

    Returns:
        The divergence in bits, in [0, 1].

    Raises:
        MaskdnError: ``"histograms must share their bins to be compared"`` or ``"cannot compare an
            empty histogram"``.
    """
    _check_pair(p, q)
    a, b = p.probabilities(), q.probabilities()
    m = (a + b) / 2

    def kl(u: np.ndarray) -> float:
        nz = u > 0
        return float(np.sum(u[nz] * np.log2(u[nz] / m[nz])))

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


# --------------------------------------------------------------------------------------------------
# Models, images, features
# --------------------------------------------------------------------------------------------------


def _label_of(source: str | os.PathLike) -> str:
    """A short name for a model: the zoo name, a file's stem, or its folder for a run's ``model.*``."""
    p = Path(source)
    if p.suffix in (".safetensors", ".pth", ".pt") or os.sep in str(source) or "/" in str(source):
        return p.parent.name if p.stem == "model" and p.parent.name else p.stem
    return str(source)


def _resolve_models(
    models: Sequence[ModelSource] | ModelSource, device: str | torch.device, attn_mask_ratio: float | None = None
) -> list[tuple[str, str, MaskedSwinIR]]:
    """``(label, source, model)`` per model: names and paths are loaded, labels made unique."""
    from .weights import load_model

    if isinstance(models, (str, os.PathLike, MaskedSwinIR, tuple)):
        models = [models]
    out = []
    for i, m in enumerate(models):
        if isinstance(m, tuple):
            label, m = m
            label = str(label)
        else:
            label = _label_of(m) if not isinstance(m, MaskedSwinIR) else f"model{i}"
        if isinstance(m, MaskedSwinIR):
            source, model = "(in memory)", on_device(m, device)  # the caller's model is never moved
        else:
            source, model = str(m), load_model(m, device=device, attn_mask_ratio=attn_mask_ratio)
        if not isinstance(model, MaskedSwinIR):  # IDF: no embedding, residual groups or tokens to compare
            raise MaskdnError(f"{source}: maskdn analyze compares the layers of masked-training SwinIR models; "
                              f"{type(model).__name__} has none of them")
        out.append((label, source, model))
    if not out:
        raise MaskdnError("no models to analyze")
    labels: list[str] = []
    for lb, _, _ in out:  # a repeated label gets -2, -3, ...
        k, unique = 1, lb
        while unique in labels:
            k += 1
            unique = f"{lb}-{k}"
        labels.append(unique)
    return [(lb, src, m) for lb, (_, src, m) in zip(labels, out)]


def _layers(models: list[tuple[str, str, MaskedSwinIR]], layers: Sequence[str] | None) -> list[str]:
    """The requested feature points (default: those all models have, in network order)."""
    first = models[0][2].feature_names()
    common = [n for n in first if all(n in m.feature_names() for _, _, m in models)]
    if not layers:
        return common
    unknown = [n for n in layers if n not in common]
    if unknown:
        raise MaskdnError(f"unknown layer {unknown[0]!r} (valid: {', '.join(common)})")
    return list(dict.fromkeys(layers))


def _token_positions(n_pixels: int, tokens: int, seed: int, image: str) -> Tensor:
    """A fixed, seeded subset of ``tokens`` flat pixel positions of an image (sorted), all if fewer."""
    g = torch.Generator().manual_seed(derive_seed(seed, image, "analysis-tokens"))
    if tokens >= n_pixels:
        return torch.arange(n_pixels)
    return torch.randperm(n_pixels, generator=g)[:tokens].sort().values


def _features(
    model: MaskedSwinIR, noisy: Tensor, layers: list[str], positions: Tensor, seed: int, image: str, device: str | torch.device
) -> dict[str, np.ndarray]:
    """``{layer: [tokens, C] float32}`` at the sampled positions; masks drawn from a per-image seed."""
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, image, "analysis-mask"))
    with torch.inference_mode():
        feats = model.forward_intermediates(noisy[None].to(device), generator=gen)
    idx = positions.to(device)
    return {name: feats[name][0].flatten(1)[:, idx].T.float().cpu().numpy() for name in layers}


# --------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------


def analyze(
    models: Sequence[ModelSource] | ModelSource,
    data: str | os.PathLike,
    noises: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = "analysis",
    *,
    layers: Sequence[str] | None = None,
    reference: str | None = None,
    limit: int | None = None,
    crop: int | None = 256,
    tokens: int = 1024,
    bins: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    attn_mask_ratio: float | None = None,
) -> dict:
    """Feature histograms, distances to the reference noise and CKA of ``models`` on the images of ``data``.

    ``models``: zoo names, weights paths, :class:`MaskedSwinIR` objects or ``(label, model or path)``
    pairs. ``noises`` are ``name:level`` specs (default :data:`DEFAULT_NOISES`); ``reference`` (default
    :data:`REFERENCE_NOISE`, the training noise) is always analyzed, first. ``layers`` picks feature points (default: all that every model has). ``limit`` takes the first
    N images, ``crop`` center-crops them (0 or None: whole images), ``tokens`` positions are sampled per
    image. Returns the dict written to ``OUT/analysis.json``; with ``out_dir`` None nothing is written.

    Args:
        models: One model source or a sequence of them (see above); labels are made unique (``-2``, ...).
        data: A folder of clean images (:func:`maskdn.datasets.load_dataset`; floats in [0, 1]).
        noises: Noise specs ``name:level`` (:func:`maskdn.noise.parse_noise`); None: :data:`DEFAULT_NOISES`.
        out_dir: Output folder (created; :func:`write_outputs`); None: write nothing.
        layers: Feature point names of :meth:`MaskedSwinIR.feature_names`; None or empty: all common ones.
        reference: The reference noise spec; None: :data:`REFERENCE_NOISE`.
        limit: The first ``limit`` images in name order (None: all); an int >= 1.
        crop: Side in pixels of the center crop; 0 or None: whole images.
        tokens: Token (pixel) positions sampled per image, >= 2 (all when the crop has fewer).
        bins: Finite histogram bins per layer, >= 2.
        seed: Seeds the noise, the token positions and the attention masks.
        device: Where the models run.
        progress: Show a tqdm bar on stderr.
        attn_mask_ratio: Sets the attention-mask ratio of the models loaded by name or path
            (:func:`maskdn.weights.load_model`); None: as stored.

    Returns:
        ``{format, reference, noises, layers, data, images, crop, tokens_per_image, bins, seed, models}``
        with ``models[label] = {source, masks_attention, attn_mask_ratio, layers}`` and
        ``layers[layer] = {"edges": [lo, hi, n_bins], "noises": {cond: {w1, w1_std, js, cka, mean, std,
        kurtosis, outliers, counts}}}``: ``w1`` in feature units, ``w1_std`` in reference stds, ``js`` in
        bits in [0, 1], ``cka`` in [0, 1] (NaN where undefined), ``counts`` of ``n_bins + 2`` bins.

    Raises:
        MaskdnError: An invalid ``limit``/``crop``/``tokens``/``bins`` (:func:`maskdn.errors.check_int`)
            or noise spec, a ``device`` this machine lacks (:func:`maskdn.devices.resolve_device`),
            ``"<data>: no images"`` or an unreadable folder/image, ``"no models to analyze"``, a model
            that cannot be loaded, ``"unknown layer '<name>' (valid: ...)"``, or an
            output folder or file that cannot be written.
    """
    if limit is not None:
        check_int("limit", limit)
    if crop:
        check_int("crop", crop)
    check_int("tokens", tokens, 2)
    check_int("bins", bins, 2)
    device = resolve_device(device)
    ref = str(parse_noise(reference or REFERENCE_NOISE))
    conds = list(dict.fromkeys([ref, *(str(parse_noise(n)) for n in (DEFAULT_NOISES if noises is None else noises))]))
    samples = load_dataset(data, limit)
    if not samples:
        raise MaskdnError(f"{data}: no images")
    resolved = _resolve_models(models, device, attn_mask_ratio)
    names = _layers(resolved, layers)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        make_output_dir(out)

    images = [(s.name, center_crop(s.clean, crop)) for s in samples]
    positions = {name: _token_positions(x.shape[-2] * x.shape[-1], tokens, seed, name) for name, x in images}
    noisy_cache: dict[tuple[str, str], Tensor] = {}

    def noisy(name: str, x: Tensor, cond: str) -> Tensor:
        key = (name, cond)
        if key not in noisy_cache:  # every model sees the very same noisy crop
            noisy_cache[key] = apply_noise(x, cond, seed=noise_seed(seed, name, cond))
        return noisy_cache[key]

    result: dict[str, Any] = {
        "format": FORMAT,
        "reference": ref,
        "noises": conds,
        "layers": names,
        "data": str(data),
        "images": [n for n, _ in images],
        "crop": crop or None,
        "tokens_per_image": tokens,
        "bins": bins,
        "seed": seed,
        "models": {},
    }
    bar = tqdm(total=len(resolved) * len(images) * len(conds), desc="analyze", unit="pass", disable=not progress,
               dynamic_ncols=True)
    try:
        for label, source, model in resolved:
            model.eval()
            # 1. the reference noise on every image: its sampled features fix the bins
            ref_feats: list[dict[str, np.ndarray]] = []
            for name, x in images:
                ref_feats.append(_features(model, noisy(name, x, ref), names, positions[name], seed, name, device))
                bar.update(1)
            hists: dict[str, dict[str, Histogram]] = {}
            cross: dict[str, dict[str, _CrossMoments]] = {}
            for layer in names:
                ref_values = np.concatenate([f[layer].ravel() for f in ref_feats])
                edges = histogram_edges(ref_values, bins)
                center = float(ref_values.mean())
                hists[layer] = {c: Histogram(edges, center) for c in conds}
                hists[layer][ref].add(ref_values)
                dim = ref_feats[0][layer].shape[1]
                cross[layer] = {c: _CrossMoments(dim, dim) for c in conds}
                for f in ref_feats:
                    cross[layer][ref].update(f[layer], f[layer])
            # 2. every other noise, image by image, paired with the stored reference features
            for (name, x), rf in zip(images, ref_feats):
                for cond in conds[1:]:
                    f = _features(model, noisy(name, x, cond), names, positions[name], seed, name, device)
                    for layer in names:
                        hists[layer][cond].add(f[layer])
                        cross[layer][cond].update(rf[layer], f[layer])
                    bar.update(1)
            result["models"][label] = _model_record(source, model, hists, cross, ref)
            del ref_feats
    finally:
        bar.close()
    if out is not None:
        write_outputs(result, out)
    return result


def _model_record(source: str, model: MaskedSwinIR, hists: dict, cross: dict, ref: str) -> dict:
    layers_out = {}
    for layer, per in hists.items():
        r = per[ref]
        ref_std = r.moments()["std"]
        noises_out = {}
        for cond, h in per.items():
            w1 = wasserstein1(h, r)
            noises_out[cond] = {
                "w1": w1,
                "w1_std": w1 / ref_std if ref_std > 0 else math.nan,
                "js": jensen_shannon(h, r),
                "cka": cross[layer][cond].cka(),
                **h.moments(),
                "counts": h.counts.tolist(),
            }
        layers_out[layer] = {"edges": [float(r.edges[0]), float(r.edges[-1]), int(r.edges.size - 1)], "noises": noises_out}
    return {
        "source": source,
        "masks_attention": bool(model.masks_attention),
        "attn_mask_ratio": float(model.config.attn_mask_ratio),
        "layers": layers_out,
    }


def _histogram_of(layer_record: Mapping[str, Any], cond: str) -> Histogram:
    lo, hi, n = layer_record["edges"]
    h = Histogram(np.linspace(lo, hi, int(n) + 1))
    h.counts = np.asarray(layer_record["noises"][cond]["counts"], dtype=np.int64)
    return h


def mean_over_noises(result: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {layer: {w1, w1_std, js, cka}}}``: means over the non-reference noises.

    Args:
        result: The dict :func:`analyze` returns (or ``analysis.json`` loaded back, NaN as None).

    Returns:
        Per model label and layer, the means of ``w1`` (feature units), ``w1_std`` (reference stds),
        ``js`` (bits) and ``cka``; NaN when there is no other noise or a value is NaN/None.

    Raises:
        KeyError: ``result`` lacks ``reference``, ``models`` or a per-noise key.
    """
    ref = result["reference"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, rec in result["models"].items():
        per_layer = {}
        for layer, lr in rec["layers"].items():
            rows = [v for c, v in lr["noises"].items() if c != ref]
            per_layer[layer] = {k: float(np.mean([math.nan if v[k] is None else v[k] for v in rows])) if rows else math.nan
                                for k in ("w1", "w1_std", "js", "cka")}
        out[label] = per_layer
    return out


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary_markdown(result: Mapping[str, Any]) -> str:
    """Markdown: the means over non-reference noises per model and layer, then JS / CKA per noise.

    Args:
        result: The dict :func:`analyze` returns (or ``analysis.json`` loaded back, NaN as None).

    Returns:
        The Markdown text; values with 3 decimals, ``–`` for NaN/None.

    Raises:
        KeyError: ``result`` lacks a key :func:`analyze` writes.
    """
    ref = result["reference"]
    others = [c for c in result["noises"] if c != ref]
    n_img = len(result["images"])
    crop = f"{result['crop']}² center crops" if result.get("crop") else "whole images"
    parts = [
        "# Feature analysis",
        "",
        (f"{n_img} image{'s' if n_img != 1 else ''} of `{result['data']}` ({crop}), {result['tokens_per_image']} "
         f"sampled tokens each, seed {result['seed']}. Reference noise: **{ref}**; compared: {', '.join(others) or 'none'}."),
        "",
        ("How far each noise's feature histogram is from the reference's: W1/σ is the Wasserstein-1 distance in "
         "units of the reference's std, JS the Jensen–Shannon divergence (bits, 0–1); CKA is the linear CKA between the "
         "same tokens' features under the noise and under the reference (1 = same representation). "
         "Noise-invariant features: W1/σ and JS near 0, CKA near 1."),
        "",
        f"## Means over the {len(others)} non-reference noise{'s' if len(others) != 1 else ''}",
        "",
        "| model | layer | W1/σ | JS | CKA |",
        "|---|---|---|---|---|",
    ]
    means = mean_over_noises(result)
    for label, per in means.items():
        for layer, m in per.items():
            parts.append(f"| {label} | {layer} | {_fmt(m['w1_std'])} | {_fmt(m['js'])} | {_fmt(m['cka'])} |")
    parts.append("")
    for label, rec in result["models"].items():
        layers = list(rec["layers"])
        masked = "attention-masked" if rec["masks_attention"] else "unmasked at test time"
        parts += [f"## {label} ({masked}): JS / CKA per noise", ""]
        parts.append("| noise | " + " | ".join(layers) + " |")
        parts.append("|---" * (len(layers) + 1) + "|")
        for c in others:
            cells = [f"{_fmt(rec['layers'][ly]['noises'][c]['js'])} / {_fmt(rec['layers'][ly]['noises'][c]['cka'])}"
                     for ly in layers]
            parts.append(f"| {c} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"


def plot_histograms(result: Mapping[str, Any], model: str, path: str | os.PathLike) -> Path:
    """One panel per layer: the density of feature values under each noise, on the shared bins.

    The x-axis is the feature value, the y-axis the probability density (:meth:`Histogram.density`,
    probability per unit value; outliers beyond the bins left out).

    Args:
        result: The dict :func:`analyze` returns (or ``analysis.json`` loaded back, NaN as None).
        model: A model label of ``result["models"]``.
        path: The image file; its suffix names the format (:func:`maskdn.report.save_figure`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KeyError: ``model`` is not in ``result["models"]``.
        MaskdnError: The file cannot be written.
    """
    from .report import pyplot, save_figure

    plt = pyplot()
    rec = result["models"][model]
    layers = list(rec["layers"])
    ref = result["reference"]
    ncols = min(len(layers), 4)
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows + 0.6), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        lr = rec["layers"][layer]
        for cond in result["noises"]:
            h = _histogram_of(lr, cond)
            centers = (h.edges[:-1] + h.edges[1:]) / 2
            is_ref = cond == ref
            ax.plot(centers, h.density(), linewidth=1.8 if is_ref else 1.0, color="black" if is_ref else None,
                    label=f"{cond} (reference)" if is_ref else cond, zorder=3 if is_ref else 2)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("feature value (the layer's units)", fontsize=7)
        ax.set_ylabel("density (per unit value)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    masked = "attention-masked" if rec["masks_attention"] else "unmasked at test time"
    fig.suptitle(f"Feature values of {model} ({masked})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 0.95))
    return save_figure(fig, path)


def plot_cka(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """One panel per model: linear CKA with the reference against the layer, one line per noise.

    Args:
        result: The dict :func:`analyze` returns (or ``analysis.json`` loaded back, NaN as None).
        path: The image file; its suffix names the format (:func:`maskdn.report.save_figure`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written.
    """
    from .report import pyplot, save_figure

    plt = pyplot()
    labels = list(result["models"])
    ref = result["reference"]
    others = [c for c in result["noises"] if c != ref]
    n = len(labels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.4, 3.2), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        rec = result["models"][label]
        layers = list(rec["layers"])
        xs = range(len(layers))
        for c in others:
            ax.plot(xs, [rec["layers"][ly]["noises"][c]["cka"] for ly in layers], marker="o", markersize=3,
                    linewidth=1.2, label=c)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("feature point (network order)", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"linear CKA vs {ref}")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, path)


def write_outputs(result: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """``analysis.json``, ``summary.md``, ``cka.png`` and ``histograms_<model>.png`` in ``out_dir``.

    Every file is written atomically; in ``analysis.json`` non-finite floats become ``null``; model
    labels are made file-safe (characters outside ``[A-Za-z0-9._-]`` become ``_``).

    Args:
        result: The dict :func:`analyze` returns (or ``analysis.json`` loaded back, NaN as None).
        out_dir: The existing folder to write into.

    Returns:
        The written paths: ``analysis.json``, ``summary.md``, ``cka.png``, then one histogram plot per model.

    Raises:
        MaskdnError: A file cannot be written (:func:`maskdn.io.atomic_write`).
    """
    from .io import atomic_write
    from .report import write_text

    out = Path(out_dir)

    def clean(v: Any) -> Any:  # strict JSON: NaN becomes null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    with atomic_write(out / "analysis.json") as tmp:
        tmp.write_text(json.dumps(clean(dict(result)), indent=1) + "\n", encoding="utf-8")
    paths = [out / "analysis.json", write_text(out / "summary.md", summary_markdown(result) + "\n"),
             plot_cka(result, out / "cka.png")]
    for label in result["models"]:
        paths.append(plot_histograms(result, label, out / f"histograms_{_safe_name(label)}.png"))
    return paths
