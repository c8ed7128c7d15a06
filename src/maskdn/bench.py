"""The benchmark runner: PSNR/SSIM of denoising methods over datasets × noise conditions.

For every dataset × image × condition (each noise of the grid for folders of clean images; ``real``
for real-noise pair folders) × method (× pass count for stochastic models) one record is written:
``{dataset, image, method, passes, noise, level, psnr, ssim, seed}``. Noisy inputs are the pure
functions :func:`~maskdn.noise.apply_noise` of (image name, noise, seed), so every method sees the
same noisy image and runs are reproducible.

``OUT/results.json`` is rewritten atomically after each image and a rerun resumes: records already
there (same dataset, image, method, passes, noise, level, seed) are not recomputed. The summaries
(``summary.csv``, ``summary.md``), the curves (``curves.png``) and a gallery of center crops of the
first image (``gallery.png``) are written at the end by :mod:`maskdn.report`.

A method is a name and a callable on a float ``[3, H, W]`` noisy image returning its estimate.
Built-ins: ``noisy`` (identity, the reference), ``nlm`` (scikit-image non-local means), ``bm3d`` (the
optional ``bm3d`` package); any other name is a maskdn zoo model or weights file. Stochastic models
(test-time attention masking) are scored both single-pass and with ``passes`` averaged passes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .errors import MaskdnError
from .evaluate import REAL, load_dataset
from .inference import check_passes, denoise_tensor
from .io import atomic_write
from .metrics import psnr, ssim
from .noise import apply_noise, noise_seed, parse_noise
from .report import method_label

__all__ = [
    "BUILTIN_METHODS",
    "GALLERY_CROP",
    "GALLERY_NOISES",
    "PAPER_GRID",
    "Method",
    "load_results",
    "record_key",
    "resolve_method",
    "run_bench",
]

#: The paper's noise grid (``name:level``), the default of :func:`run_bench`.
PAPER_GRID: list[str] = (
    [f"gaussian:{s}" for s in (15, 25, 50)]
    + [f"correlated:{s}" for s in (40, 45, 50, 55, 60)]
    + [f"speckle:{v}" for v in ("0.018", "0.024", "0.03", "0.036", "0.04")]
    + [f"poisson:{a}" for a in ("2", "2.5", "3", "3.5")]
    + [f"mixture:{k}" for k in range(1, 6)]
    + ["saltpepper:0.02"]
    + [f"jpeg:{q}" for q in (10, 30)]
    + [f"camera:{k}" for k in (1, 3, 5)]
)

BUILTIN_METHODS = ("noisy", "nlm", "bm3d")
#: Side of the gallery's center crop (smaller when the image is).
GALLERY_CROP = 96
#: How many conditions of the first image the gallery shows.
GALLERY_NOISES = 4

_RESULTS = "results.json"
_GALLERY_CACHE = "gallery_crops.npz"
_KEY_FIELDS = ("dataset", "image", "method", "passes", "noise", "level", "seed")


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


@dataclass
class Method:
    """A named denoiser: ``fn(noisy [3, H, W], passes, generator) -> estimate [3, H, W]``.

    ``pass_counts`` lists the pass counts it is scored with (``[1]`` unless stochastic).
    """

    name: str
    fn: Callable[[Tensor, int, torch.Generator | None], Tensor]
    pass_counts: list[int] = field(default_factory=lambda: [1])


def _to_hwc(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()


def _from_hwc(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(like.dtype)


def _sigma(img: np.ndarray) -> float:
    """Noise std of an HxWx3 float image: scikit-image ``estimate_sigma`` (wavelet MAD), channel mean."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(img, channel_axis=-1, average_sigmas=True))


def _nlm(x: Tensor) -> Tensor:
    from skimage.restoration import denoise_nl_means

    img = _to_hwc(x)
    sigma = _sigma(img)
    if not sigma > 0:
        return x.clone()
    out = denoise_nl_means(
        img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1
    )
    return _from_hwc(out, x)


def _bm3d_module():
    try:
        import bm3d  # type: ignore[import-not-found]
    except ImportError:
        raise MaskdnError("method bm3d needs the optional bm3d package: pip install bm3d (non-commercial licence)") from None
    return bm3d


def _bm3d(x: Tensor) -> Tensor:
    bm3d = _bm3d_module()
    img = _to_hwc(x)
    sigma = _sigma(img)
    if not sigma > 0:
        return x.clone()
    return _from_hwc(np.asarray(bm3d.bm3d_rgb(img, sigma), dtype=np.float64), x)


def _plain(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, int, torch.Generator | None], Tensor]:
    return lambda x, passes, generator: fn(x)


def resolve_method(method: str | tuple[str, Callable[[Tensor], Tensor]] | Method, passes: int = 4, device: str | torch.device = "cpu") -> Method:
    """A :class:`Method` from a built-in name, a model name / weights path, or a ``(name, callable)`` pair.

    A model is loaded once; it runs under a generator seeded per call by :func:`run_bench`. A
    stochastic model is scored with ``[1, passes]`` passes (just ``[1]`` when ``passes`` is 1).
    Unknown names and a missing ``bm3d`` package raise :class:`MaskdnError`.
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, tuple):
        name, fn = method
        if not callable(fn):
            raise MaskdnError(f"method {name}: not callable")
        return Method(str(name), _plain(fn))
    if not isinstance(method, (str, os.PathLike)):
        raise MaskdnError(f"method {method!r}: expected a name, a weights path or a (name, callable) pair")
    name = str(method)
    if name == "noisy":
        return Method(name, _plain(lambda x: x))
    if name == "nlm":
        return Method(name, _plain(_nlm))
    if name == "bm3d":
        _bm3d_module()  # fail now, before any work
        return Method(name, _plain(_bm3d))
    from .weights import load_model

    try:
        model = load_model(name, device=device)
    except MaskdnError as e:
        raise MaskdnError(
            f"method {name}: not a built-in ({', '.join(BUILTIN_METHODS)}) nor a loadable model ({e})"
        ) from None

    def run(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        y = denoise_tensor(model, x[None].to(device), passes=k, generator=generator)
        return y[0].cpu()

    counts = [1, passes] if model.masks_attention and passes > 1 else [1]
    label = Path(name).stem if (os.sep in name or name.endswith((".safetensors", ".pth"))) else name
    return Method(label, run, counts)


def _resolve_all(methods: Any, passes: int, device: str | torch.device) -> list[Method]:
    if isinstance(methods, (str, os.PathLike, tuple, Method)):
        methods = [methods]
    if isinstance(methods, Mapping):
        methods = [(k, v) if callable(v) else v for k, v in methods.items()]
    out = [resolve_method(m, passes, device) for m in methods]
    if not out:
        raise MaskdnError("no methods to benchmark")
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MaskdnError(f"method {dup[0]}: given twice (method names must be unique)")
    return out


# --------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------


def record_key(r: Mapping[str, Any]) -> tuple:
    """The identity of a record: (dataset, image, method, passes, noise, level, seed)."""
    level = r.get("level")
    return (
        r["dataset"], r["image"], r["method"], int(r["passes"]), r["noise"],
        None if level is None else float(level), int(r["seed"]),
    )


def load_results(path: str | Path) -> list[dict]:
    """The records of a ``results.json`` (a JSON list, or ``{"records": [...]}``); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MaskdnError(f"{path}: cannot resume from it ({e}); move it away to start afresh") from None
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in _KEY_FIELDS) for r in records):
        raise MaskdnError(f"{path}: not a benchmark results file; move it away to start afresh")
    return records


def _write_results(path: Path, records: list[dict]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Gallery crops (the first image of the first dataset), kept across resumed runs
# --------------------------------------------------------------------------------------------------


def _crop_box(h: int, w: int, size: int = GALLERY_CROP) -> tuple[int, int, int]:
    s = min(size, h, w)
    return (h - s) // 2, (w - s) // 2, s


def _crop_u8(x: Tensor, box: tuple[int, int, int]) -> np.ndarray:
    top, left, s = box
    c = x[:, top : top + s, left : left + s]
    return torch.round(c.detach().cpu().double().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()


class _Gallery:
    """Crops of one image: ``panels[condition][label] = (uint8 HxWx3, psnr or nan)``, cached in an npz."""

    def __init__(self, path: Path, dataset: str, image: str, seed: int) -> None:
        self.path, self.dataset, self.image, self.seed = path, dataset, image, seed
        self.panels: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
        self.clean: np.ndarray | None = None
        self._load()

    def _tag(self) -> str:
        return f"{self.dataset}/{self.image}/seed{self.seed}"

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["tag"]) != self._tag():
                    return
                meta = json.loads(str(z["meta"]))
                self.clean = z["clean"]
                for i, (cond, label, score) in enumerate(meta):
                    self.panels.setdefault(cond, {})[label] = (z[f"p{i}"], math.nan if score is None else float(score))
        except (OSError, ValueError, KeyError, TypeError):
            self.panels, self.clean = {}, None

    def add(self, cond: str, label: str, crop: np.ndarray, score: float) -> None:
        self.panels.setdefault(cond, {})[label] = (crop, score)

    def save(self) -> None:
        if self.clean is None:
            return
        arrays: dict[str, np.ndarray] = {"clean": self.clean, "tag": np.array(self._tag())}
        meta = []
        for cond, labels in self.panels.items():
            for label, (crop, score) in labels.items():
                arrays[f"p{len(meta)}"] = crop
                meta.append([cond, label, score if math.isfinite(score) else None])
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_write(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def as_dict(self, conditions: list[str], methods: list[str]) -> dict:
        """The input of :func:`maskdn.report.plot_gallery`, panels ordered as the run's."""
        rows = []
        for cond in conditions:
            labels = self.panels.get(cond, {})
            ordered = [(k, *labels[k]) for k in ["noisy input"] + methods if k in labels]
            if ordered:
                rows.append({"condition": cond, "panels": [(k, a, None if s is None or math.isnan(s) else s) for k, a, s in ordered]})
        return {"title": f"{self.dataset} / {self.image}", "clean": self.clean, "rows": rows}


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


def _condition(cond: str) -> tuple[str, float | None]:
    if cond == REAL:
        return REAL, None
    spec = parse_noise(cond)
    return spec.name, float(spec.level)


def _noisy_input(sample, cond: str, seed: int) -> Tensor:
    if sample.noisy is not None:
        return sample.noisy
    return apply_noise(sample.clean, cond, seed=noise_seed(seed, sample.name, cond))


def run_bench(
    data_dirs: Sequence[str | Path],
    methods: Sequence[str | tuple[str, Callable[[Tensor], Tensor]] | Method] | Mapping[str, Any],
    noises: Sequence[str] = PAPER_GRID,
    out_dir: str | Path = "bench",
    *,
    seed: int = 0,
    passes: int = 4,
    limit: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    reports: bool = True,
) -> list[dict]:
    """Benchmark ``methods`` on ``data_dirs`` under ``noises``; returns all records of ``OUT/results.json``.

    ``methods``: names (``noisy``, ``nlm``, ``bm3d``, a zoo model, a weights path), ``(name, callable)``
    pairs, :class:`Method` objects, or a mapping name → callable/name. ``limit`` caps the images per
    folder. Records already in ``OUT/results.json`` are kept and not recomputed (records of other runs,
    e.g. other methods or seeds, are kept too). With ``reports`` the summaries and plots are written.
    """
    check_passes(passes)
    conds_noise = [str(parse_noise(n)) for n in noises]
    conds_noise = list(dict.fromkeys(conds_noise))
    resolved = _resolve_all(methods, passes, device)
    if not data_dirs:
        raise MaskdnError("no dataset folders given")
    datasets = []
    for d in data_dirs:
        samples = load_dataset(d, limit)
        if not samples:
            raise MaskdnError(f"{d}: no images")
        name = Path(d).resolve().name
        if any(name == n for n, _ in datasets):
            raise MaskdnError(f"{d}: dataset name {name} given twice")
        datasets.append((name, samples))
    if not conds_noise and any(all(s.noisy is None for s in samples) for _, samples in datasets):
        raise MaskdnError("no noises given for the clean-image folders")

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaskdnError(f"{out}: cannot create ({e.strerror or e})") from None
    results_path = out / _RESULTS
    previous = load_results(results_path)
    done: dict[tuple, dict] = {record_key(r): r for r in previous}

    def conditions_of(samples) -> list[str]:
        return [REAL] if any(s.noisy is not None for s in samples) else conds_noise

    # the plan, in order: (dataset index, sample, condition, method, passes)
    units_per_image = {n: len(conditions_of(s)) * sum(len(m.pass_counts) for m in resolved) for n, s in datasets}
    total = sum(units_per_image[n] * len(s) for n, s in datasets)
    planned: list[tuple] = []
    new: dict[tuple, dict] = {}

    first_name, first_samples = datasets[0]
    gallery = _Gallery(out / _GALLERY_CACHE, first_name, first_samples[0].name, seed)
    gallery_conds = conditions_of(first_samples)[:GALLERY_NOISES]
    method_labels = [method_label(m.name, k) for m in resolved for k in m.pass_counts if m.name != "noisy"]

    def merged() -> list[dict]:
        keys = set(planned)
        ordered = [new.get(k) or done[k] for k in planned if k in new or k in done]
        return ordered + [r for r in previous if record_key(r) not in keys and record_key(r) not in new]

    bar = tqdm(total=total, desc="bench", unit="run", disable=not progress, dynamic_ncols=True)
    try:
        for dname, samples in datasets:
            for idx, s in enumerate(samples):
                is_first = dname == first_name and idx == 0
                if is_first:
                    box = _crop_box(*s.clean.shape[-2:])
                    gallery.clean = _crop_u8(s.clean, box)
                changed = False
                for cond in conditions_of(samples):
                    noise, level = _condition(cond)
                    noisy: Tensor | None = None
                    show = is_first and cond in gallery_conds
                    for m in resolved:
                        for k in m.pass_counts:
                            rec = {"dataset": dname, "image": s.name, "method": m.name, "passes": k,
                                   "noise": noise, "level": level}
                            key = record_key({**rec, "seed": seed})
                            planned.append(key)
                            label = method_label(m.name, k)
                            if key in done:  # resumed: never recomputed (its gallery crop comes from the cache)
                                bar.update(1)
                                continue
                            if noisy is None:
                                noisy = _noisy_input(s, cond, seed)
                                if show:
                                    gallery.add(cond, "noisy input", _crop_u8(noisy, box), psnr(noisy, s.clean))
                            gen = torch.Generator().manual_seed(seed)
                            est = m.fn(noisy.clone(), k, gen)
                            if not isinstance(est, Tensor) or est.shape != s.clean.shape:
                                got = tuple(est.shape) if isinstance(est, Tensor) else type(est).__name__
                                raise MaskdnError(f"method {m.name}: returned {got}, expected {tuple(s.clean.shape)}")
                            est = est.detach().cpu().float()
                            p = psnr(est, s.clean)
                            new[key] = {**rec, "psnr": p, "ssim": ssim(est, s.clean), "seed": seed}
                            changed = True
                            if show and m.name != "noisy":
                                gallery.add(cond, label, _crop_u8(est, box), p)
                            bar.update(1)
                    if show and noisy is None and "noisy input" not in gallery.panels.get(cond, {}):
                        noisy = _noisy_input(s, cond, seed)
                        gallery.add(cond, "noisy input", _crop_u8(noisy, box), psnr(noisy, s.clean))
                        changed = True
                if changed:
                    _write_results(results_path, merged())
                    if is_first:
                        gallery.save()
    finally:
        bar.close()
        if new:  # keep whatever finished, also on an interrupt
            _write_results(results_path, merged())
    records = merged()
    if not new and not results_path.exists():
        _write_results(results_path, records)
    if reports:
        from . import report

        report.write_reports(records, out, gallery.as_dict(gallery_conds, method_labels))
    return records
