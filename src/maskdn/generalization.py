"""The generalization benchmark, and the one evaluator: PSNR/SSIM (and LPIPS) of denoising methods
over datasets × noise conditions.

For every dataset × image × condition (each noise of the grid for folders of clean images; ``real``
for real-noise pair folders) × method (× pass count for stochastic models) one record is written:
``{dataset, image, method, passes, noise, level, psnr, ssim, [lpips,] seed}``. Noisy inputs are the
pure functions :func:`~maskdn.noise.apply_noise` of (image name, noise, seed) (:func:`noisy_pair`;
with ``crop`` the noise is added to the whole image, then the noisy and the clean image are
center-cropped) and every model run uses a generator seeded with ``seed``, so every method sees the
same noisy image and runs are reproducible. ``maskdn evaluate``, the training loop's validation
(:func:`maskdn.train.loop.validate`), ``maskdn demo`` and ``benchmarks/quick_grid.py`` all score
through :func:`run_bench`. The CLI subcommand is ``maskdn bench``.

``OUT/results.json`` is rewritten atomically every few seconds and at the end, and a rerun resumes:
records already there (same dataset, image, method, passes, noise, level, seed) are not recomputed.
The summaries (``summary.csv``, ``summary.md``), the curves (``curves.png``) and a gallery of center
crops of the first image (``gallery.png``) are written at the end by :mod:`maskdn.report`.

A method is a name and a callable on a float ``[3, H, W]`` noisy image returning its estimate.
Built-ins (:mod:`maskdn.classical`): ``noisy`` (identity, the reference), ``nlm``, ``bm3d`` (σ
estimated from the noisy image) and ``bm3d-oracle`` (the true σ, only where one is defined: no record
elsewhere); any other name is a maskdn zoo model or weights file. Stochastic models (test-time
attention masking) are scored both single-pass and with ``passes`` averaged passes.

``jobs > 1`` runs the work in that many single-threaded worker processes, one item per (method, image,
condition): the built-in methods (noisy input included) and, on the CPU, the models given by name or
path (each worker loads a model once); callables, and models on a GPU, run in this process. The records
are the same for any ``jobs``. LPIPS (:mod:`maskdn.perceptual`) is
scored when its weights are available offline; otherwise ``summary.md`` says why it is absent.
"""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .classical import (
    CLASSICAL_METHODS,
    check_available,
    defined_for,
    denoise_classical,
)
from .datasets import REAL, Sample, load_dataset
from .devices import resolve_device
from .errors import MaskdnError, check_int
from .geometry import center_crop
from .inference import check_passes, denoise_tensor
from .io import atomic_write, make_output_dir
from .metrics import SSIM_MIN_SIZE, psnr, ssim
from .noise import apply_noise, noise_seed, parse_noise
from .report import method_label

__all__ = [
    "BUILTIN_METHODS",
    "GALLERY_CROP",
    "GALLERY_NOISES",
    "PAPER_GRID",
    "Method",
    "load_results",
    "read_records",
    "method_name",
    "model_method",
    "noisy_pair",
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

BUILTIN_METHODS = CLASSICAL_METHODS
#: Side of the gallery's center crop (smaller when the image is).
GALLERY_CROP = 96
#: How many conditions of the first image the gallery shows.
GALLERY_NOISES = 4
#: Seconds between two rewrites of ``results.json`` (also rewritten at the end and on an error).
WRITE_EVERY_S = 2.0

_RESULTS = "results.json"
_GALLERY_CACHE = "gallery_crops.npz"
_KEY_FIELDS = ("dataset", "image", "method", "passes", "noise", "level", "seed")
_ORACLE_NOTE = ("bm3d-oracle is BM3D given the true noise std, defined for gaussian (σ/255) and correlated "
                "(σ/255/3) noise only: – elsewhere.")


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


@dataclass
class Method:
    """A named denoiser: ``fn(noisy [3, H, W], passes, generator) -> estimate [3, H, W]``.

    ``pass_counts`` lists the pass counts it is scored with (``[1]`` unless stochastic). ``classical``
    marks a built-in of :mod:`maskdn.classical`, run by name; ``source`` is the zoo name or weights
    path a model was loaded from. Both can run in worker processes (``jobs > 1``, on the CPU).

    Attributes:
        name: The method's name in the records (unique within a run).
        fn: ``fn(noisy, passes, generator)``: ``noisy`` a float ``[3, H, W]`` CPU tensor in [0, 1],
            ``passes`` the averaged pass count, ``generator`` the seeded :class:`torch.Generator` of
            the run (or None); returns the estimate, float ``[3, H, W]`` (not clamped).
        pass_counts: The pass counts it is scored with.
        classical: A built-in of :mod:`maskdn.classical`, run by name in workers.
        source: The zoo name or resolved weights path of a loaded model; None otherwise.
    """

    name: str
    fn: Callable[[Tensor, int, torch.Generator | None], Tensor]
    pass_counts: list[int] = field(default_factory=lambda: [1])
    classical: bool = False
    source: str | None = None


def _plain(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, int, torch.Generator | None], Tensor]:
    return lambda x, passes, generator: fn(x)


def _classical_method(name: str) -> Method:
    check_available(name)  # fail now (e.g. no bm3d package), before any work
    return Method(name, _plain(lambda x: denoise_classical(name, x)), classical=True)


def model_method(
    model, name: str, pass_counts: Sequence[int], *, tile: int | None = None, device: str | torch.device = "cpu",
    bf16: bool = False,
) -> Method:
    """A :class:`Method` running a loaded :class:`~maskdn.model.MaskedSwinIR` with each of ``pass_counts``.

    Args:
        model: The denoiser, on ``device``.
        name: The method's name in the records.
        pass_counts: The pass counts it is scored with (each an int >= 1; averaged stochastic passes,
            :func:`maskdn.inference.denoise_tensor`).
        tile: Denoise in ``tile``×``tile`` tiles (None: whole images).
        device: Where the model runs; inputs are moved there and estimates back to the CPU.
        bf16: Run the network under bfloat16 autocast (within 0.05 dB PSNR of float32,
            :func:`maskdn.inference.denoise_tensor`).

    Returns:
        A :class:`Method` whose ``fn(noisy [3, H, W], passes, generator)`` returns the float
        ``[3, H, W]`` CPU estimate, not clamped.

    Raises:
        MaskdnError: A pass count that is not an int >= 1.
    """

    def run(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        y = denoise_tensor(model, x[None].to(device), passes=k, tile=tile, generator=generator, bf16=bf16)
        return y[0].cpu()

    for k in pass_counts:
        check_passes(k)
    return Method(name, run, list(pass_counts))


def resolve_method(
    method: str | tuple[str, Callable[[Tensor], Tensor]] | Method, passes: int = 4, device: str | torch.device = "cpu",
    bf16: bool = False, tile: int | None = None, attn_mask_ratio: float | None = None,
) -> Method:
    """A :class:`Method` from a built-in name, a model name / weights path, or a ``(name, callable)`` pair.

    A model is loaded once; it runs under a generator seeded per call by :func:`run_bench`. A
    stochastic model is scored with ``[1, passes]`` passes (just ``[1]`` when ``passes`` is 1); ``bf16``
    runs a loaded model under bfloat16 autocast (see :func:`model_method`). A :class:`Method` is
    returned as is.

    Args:
        method: A built-in name (``noisy``, ``nlm``, ``bm3d``, ``bm3d-oracle``), a zoo model name or
            weights path (str or path-like, :func:`maskdn.weights.load_model`), a ``(name, callable)``
            pair whose callable maps a float ``[3, H, W]`` noisy image in [0, 1] to its estimate, or a
            :class:`Method`.
        passes: The averaged pass count a stochastic model is scored with besides 1.
        device: Where a loaded model runs.
        bf16: Run a loaded model under bfloat16 autocast.
        tile: Run a loaded model in ``tile``×``tile`` tiles (None: whole images; :func:`model_method`).
        attn_mask_ratio: Sets a loaded model's attention-mask ratio (:func:`maskdn.weights.load_model`;
            None: as stored or named).

    Returns:
        The :class:`Method`; a model's name is the file stem for a weights path, else ``method``.

    Raises:
        MaskdnError: ``"method <name>: not callable"``; ``"method <m!r>: expected a name, a weights
            path or a (name, callable) pair"``; ``"method <name>: not a built-in (...) nor a loadable
            model (<reason>)"``; the missing ``bm3d`` package (:func:`maskdn.classical.check_available`);
            or an invalid ``passes`` (:func:`maskdn.inference.check_passes`).
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
    if name in CLASSICAL_METHODS:
        return _classical_method(name)
    from .weights import load_model

    try:
        model = load_model(name, device=device, attn_mask_ratio=attn_mask_ratio)
    except MaskdnError as e:
        raise MaskdnError(
            f"method {name}: not a built-in ({', '.join(BUILTIN_METHODS)}) nor a loadable model ({e})"
        ) from None
    counts = [1, passes] if model.stochastic and passes > 1 else [1]
    method = model_method(model, method_name(name), counts, device=device, bf16=bf16, tile=tile)
    method.source = str(Path(name).resolve()) if Path(name).exists() else name
    return method


def method_name(name: str | os.PathLike) -> str:
    """The name a model given as ``name`` has in benchmark records: the file stem of a weights path,
    else ``name`` itself (a zoo name or a built-in method).

    Args:
        name: A zoo name, a built-in method name or a weights path.

    Returns:
        The record's ``method``.
    """
    name = str(name)
    return Path(name).stem if (os.sep in name or name.endswith((".safetensors", ".pth", ".ckpt"))) else name


def _resolve_all(
    methods: Any, passes: int, device: str | torch.device, bf16: bool = False, tile: int | None = None,
    attn_mask_ratio: float | None = None,
) -> list[Method]:
    if isinstance(methods, (str, os.PathLike, tuple, Method)):
        methods = [methods]
    if isinstance(methods, Mapping):
        methods = [(k, v) if callable(v) else v for k, v in methods.items()]
    out = [resolve_method(m, passes, device, bf16, tile, attn_mask_ratio) for m in methods]
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
    """The identity of a record: (dataset, image, method, passes, noise, level, seed, crop, bf16, tile, ratio).

    ``crop``, ``bf16``, ``tile`` and ``attn_mask_ratio`` are only in the records of runs that set them
    (:func:`run_bench`); absent, they are None, False, None and None.

    Args:
        r: A benchmark record (the keys of :func:`run_bench`'s records).

    Returns:
        ``(dataset, image, method, int passes, noise, float level or None, int seed, crop or None,
        bool bf16, tile or None, attn_mask_ratio or None)``; a crop of 0 counts as None.

    Raises:
        KeyError: ``r`` lacks ``dataset``, ``image``, ``method``, ``passes``, ``noise`` or ``seed``.
    """
    level = r.get("level")
    return (
        r["dataset"], r["image"], r["method"], int(r["passes"]), r["noise"],
        None if level is None else float(level), int(r["seed"]), r.get("crop") or None, bool(r.get("bf16", False)),
        r.get("tile") or None, r.get("attn_mask_ratio"),
    )


def load_results(path: str | Path) -> list[dict]:
    """The records of a ``results.json`` (a JSON list, or ``{"records": [...]}``); [] when absent.

    Args:
        path: The results file; one whose name ends in ``.gz`` is read through gzip (the records the
            repository keeps in ``docs/bench/``).

    Returns:
        The record dicts as stored (each with ``dataset, image, method, passes, noise, level, seed``);
        ``[]`` when ``path`` does not exist.

    Raises:
        MaskdnError: ``"<path>: cannot read benchmark records from it (<reason>)"`` when it cannot be
            read or is not JSON; ``"<path>: not a benchmark results file"`` when it is not a list of
            records with those keys (:func:`run_bench`, resuming, adds what to do).
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, EOFError) as e:
        raise MaskdnError(f"{path}: cannot read benchmark records from it ({e})") from None
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in _KEY_FIELDS) for r in records):
        raise MaskdnError(f"{path}: not a benchmark results file")
    return records


def read_records(source: str | Path) -> list[dict]:
    """The records of a finished or partial ``maskdn bench`` run named by a user.

    Args:
        source: Its ``results.json`` (or a gzipped ``.json.gz`` copy), or the folder holding ``results.json``.

    Returns:
        The records, as :func:`load_results` reads them.

    Raises:
        MaskdnError: ``"<source>: no benchmark results there (...)"`` when there is no such file, or
            from :func:`load_results`.
    """
    path = Path(source) / _RESULTS if Path(source).is_dir() else Path(source)
    if not path.is_file():
        raise MaskdnError(f"{source}: no benchmark results there (a results.json, a .json.gz copy, or its folder)")
    return load_results(path)


def _write_results(path: Path, records: list[dict]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Gallery crops (the first image of the first dataset), kept across resumed runs
# --------------------------------------------------------------------------------------------------


def _gallery_side(h: int, w: int, size: int = GALLERY_CROP) -> int:
    """The side of the gallery's square center crop of an ``h``×``w`` image."""
    return min(size, h, w)


def _crop_u8(x: Tensor, side: int) -> np.ndarray:
    c = center_crop(x, side)
    return torch.round(c.detach().cpu().double().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()


class _Gallery:
    """Crops of one image: ``panels[condition][label] = (uint8 HxWx3, psnr or nan)``, cached in an npz."""

    def __init__(self, path: Path, dataset: str, image: str, seed: int, variant: str = "") -> None:
        self.path, self.dataset, self.image, self.seed, self.variant = path, dataset, image, seed, variant
        self.panels: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
        self.clean: np.ndarray | None = None
        self._load()

    def _tag(self) -> str:
        return f"{self.dataset}/{self.image}/seed{self.seed}{self.variant}"

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


def noisy_pair(
    sample: Sample, cond: str, seed: int, crop: int | None = 0,
    noise_seeding: Callable[[int, str, str], int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The noisy input and the clean target of one (image, condition), as every evaluation scores them.

    A clean image gets :func:`~maskdn.noise.apply_noise` of ``cond`` (clipped to [0, 1] and quantized
    to 8-bit levels, as a saved noisy PNG would be) seeded with
    :func:`~maskdn.noise.noise_seed` ``(seed, sample.name, cond)``, so the noisy image is the same for
    every method and run; a real-noise pair uses its own noisy photo. The noise is added to the whole
    image and only then are both images center-cropped (:func:`maskdn.geometry.center_crop`), so a crop
    sees exactly the pixels of the whole-image protocol; this is the training loop's validation
    protocol (:func:`maskdn.train.data.load_validation_set`).

    Args:
        sample: The image (:class:`~maskdn.datasets.Sample`).
        cond: The noise spec (``name:level``, see :func:`~maskdn.noise.parse_noise`); its text, as
            written, is part of the noise seed. Ignored for a real-noise pair.
        seed: The run's seed.
        crop: The side of the center crop in pixels; 0 or None: the whole image.
        noise_seeding: ``(seed, image name, cond) → the seed of apply_noise``; None:
            :func:`maskdn.noise.noise_seed`.

    Returns:
        ``(noisy, clean)``: float ``[3, h, w]`` tensors in [0, 1], ``h, w`` the crop's size (at most
        ``crop``; the image's own size without crop).

    Raises:
        MaskdnError: An invalid noise spec (:func:`maskdn.noise.parse_noise`).
    """
    if sample.noisy is not None:
        noisy = sample.noisy
    else:
        noise_seeding = noise_seed if noise_seeding is None else noise_seeding
        noisy = apply_noise(sample.clean, cond, seed=noise_seeding(seed, sample.name, cond))
    return center_crop(noisy, crop), center_crop(sample.clean, crop)


def _scores(est: Tensor, clean: Tensor, with_ssim: bool) -> dict[str, float | None]:
    """PSNR, and SSIM when asked: None (left blank) for an image smaller than the SSIM window."""
    out: dict[str, float | None] = {"psnr": psnr(est, clean)}
    if with_ssim:
        out["ssim"] = ssim(est, clean) if min(clean.shape[-2:]) >= SSIM_MIN_SIZE else None
    return out


def _unit_result(
    est: Tensor, clean: Tensor, side: int | None, want_est: bool, with_ssim: bool, keep: bool
) -> tuple[dict[str, float], np.ndarray | None, Tensor | None, Tensor | None]:
    """(scores, gallery crop or None, 8-bit estimate or None, the float estimate if ``keep``) of one estimate."""
    crop = None if side is None else _crop_u8(est, side)
    est8 = torch.round(est.clamp(0, 1) * 255).to(torch.uint8) if want_est else None
    return _scores(est, clean, with_ssim), crop, est8, est if keep else None


def _classical_unit(
    method: str, sample: Sample, cond: str, seed: int, side: int | None, want_est: bool, with_ssim: bool,
    crop: int | None = 0, noise_seeding: Callable[[int, str, str], int] | None = None, keep: bool = False,
) -> tuple[dict[str, float], np.ndarray | None, Tensor | None, Tensor | None]:
    """One built-in (method, image, condition), a pure function of its arguments: run here or in a worker
    process, the same result either way."""
    noisy, clean = noisy_pair(sample, cond, seed, crop, noise_seeding)
    est = denoise_classical(method, noisy, cond).float()
    return _unit_result(est, clean, side, want_est, with_ssim, keep)


def _method_unit(
    method: Method, passes: int, sample: Sample, cond: str, seed: int, side: int | None,
    want_est: bool, with_ssim: bool, crop: int | None = 0, noise_seeding: Callable[[int, str, str], int] | None = None,
    keep: bool = False, device: str | torch.device = "cpu", pair: tuple[Tensor, Tensor] | None = None,
) -> tuple[dict[str, float], np.ndarray | None, Tensor | None, Tensor | None]:
    """One run of a model (or callable) method under a generator seeded with ``seed``; ``pair`` (the
    :func:`noisy_pair`) saves regenerating the input when the caller has it."""
    noisy, clean = noisy_pair(sample, cond, seed, crop, noise_seeding) if pair is None else pair
    est = method.fn(noisy.clone(), passes, torch.Generator(device=device).manual_seed(seed))
    if not isinstance(est, Tensor) or est.shape != clean.shape:
        got = tuple(est.shape) if isinstance(est, Tensor) else type(est).__name__
        raise MaskdnError(f"method {method.name}: returned {got}, expected {tuple(clean.shape)}")
    return _unit_result(est.detach().cpu().float(), clean, side, want_est, with_ssim, keep)


_WORKER_MODELS: dict[tuple[str, int, bool, int | None, float | None], Method] = {}


def _model_unit(
    source: str, max_passes: int, bf16: bool, tile: int | None, ratio: float | None, passes: int, *args
) -> tuple[dict[str, float], np.ndarray | None, Tensor | None, Tensor | None]:
    """:func:`_method_unit` in a worker process, which loads each model once."""
    key = (source, max_passes, bf16, tile, ratio)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = resolve_method(source, max_passes, bf16=bf16, tile=tile, attn_mask_ratio=ratio)
    return _method_unit(_WORKER_MODELS[key], passes, *args)


def _worker_init() -> None:
    from .fastpath.runtime import keep_freed_memory

    keep_freed_memory()  # a spawned process starts with glibc's defaults
    torch.set_num_threads(1)  # one work item per process: threads inside it only contend


@dataclass
class _Unit:
    """One record to compute: ``rec`` holds its identity fields, the rest what computing it needs."""

    key: tuple
    rec: dict
    sample: Sample
    cond: str
    method: Method
    passes: int
    box: int | None  # the side of its gallery crop (None: not in the gallery)


def run_bench(
    data_dirs: Sequence[str | Path | tuple[str, Sequence[Sample]]],
    methods: Sequence[str | tuple[str, Callable[[Tensor], Tensor]] | Method] | Mapping[str, Any],
    noises: Sequence[str] = PAPER_GRID,
    out_dir: str | Path | None = "bench",
    *,
    seed: int = 0,
    passes: int = 4,
    limit: int | None = None,
    progress: bool | str = True,
    device: str | torch.device = "cpu",
    reports: bool = True,
    jobs: int = 1,
    lpips: bool | None = None,
    lpips_backbone: str | Path | None = None,
    with_ssim: bool = True,
    crop: int | None = 0,
    bf16: bool = False,
    tile: int | None = None,
    attn_mask_ratio: float | None = None,
    noise_seeding: Callable[[int, str, str], int] | None = None,
    on_estimate: Callable[[dict, Tensor, Tensor], None] | None = None,
    reuse: Iterable[Mapping[str, Any]] = (),
) -> list[dict]:
    """Benchmark ``methods`` on ``data_dirs`` under ``noises``; returns all records of ``OUT/results.json``.

    Each record scores one estimate against its clean image: PSNR in dB and SSIM on 8-bit levels over
    the RGB values (:mod:`maskdn.metrics`, as BasicSR/KAIR compute them), LPIPS (AlexNet, lower is
    better) when available. Every model run gets a fresh ``torch.Generator(device).manual_seed(seed)``
    (the same for every image and condition), and the noisy inputs come from :func:`noisy_pair`.

    Args:
        data_dirs: Dataset folders (:func:`maskdn.datasets.load_dataset`; the dataset is named after the
            folder) or ``(name, samples)`` pairs of :class:`~maskdn.datasets.Sample` objects already
            in memory.
        methods: Names (``noisy``, ``nlm``, ``bm3d``, ``bm3d-oracle``, a zoo model, a weights path),
            ``(name, callable)`` pairs, :class:`Method` objects, or a mapping name → callable/name.
        noises: The noise specs (``name:level``) applied to the clean-image datasets; real-noise pairs
            are scored under ``real`` alone.
        out_dir: Where ``results.json`` (and with ``reports`` the summaries and plots) go. Records
            already in ``OUT/results.json`` are kept and not recomputed (records of other runs, e.g.
            other methods or seeds, are kept too). None keeps everything in memory (no resume, files
            or reports).
        seed: Seeds the noise (:func:`maskdn.noise.noise_seed`) and every model run.
        passes: The averaged pass count a stochastic model given by name is scored with, besides 1.
        limit: Caps the images per dataset, the first ones in name order (None: all).
        progress: A tqdm bar (with ETA) on stderr; a string is its label.
        device: Where models given by name run (and LPIPS); estimates are scored on the CPU.
        reports: Write the summaries and plots (:func:`maskdn.report.write_reports`) into ``out_dir``;
            False also leaves resumed records whose gallery crops are not cached alone.
        jobs: Worker processes for the built-in methods and CPU models (the records are the same for
            any ``jobs``).
        lpips: True/None (automatic) scores LPIPS when :func:`~maskdn.perceptual.lpips_status` finds
            its weights (``lpips_backbone`` or the torch hub cache), else the reason goes into
            ``summary.md``; False never.
        lpips_backbone: The LPIPS backbone weights file.
        with_ssim: False skips SSIM.
        crop: Score the central ``crop``×``crop`` window only (:func:`noisy_pair`: the noise is added
            to the whole image first, the protocol of the training loop's validation); 0 or None:
            whole images. Non-zero, it is part of each record (and of its identity on resuming).
        bf16: Run the models given by name under bfloat16 autocast (within 0.05 dB of float32). True,
            it is part of each record (and of its identity on resuming). :class:`Method` objects keep
            their own setting (:func:`model_method`).
        tile: Run the models given by name in ``tile``×``tile`` tiles (:func:`model_method`; None: whole
            images). Set, it is part of each record (and of its identity on resuming).
        attn_mask_ratio: Sets the attention-mask ratio of the models given by name
            (:func:`maskdn.weights.load_model`; None: as stored or named). Set, it is part of each
            record (and of its identity on resuming).
        noise_seeding: ``(seed, image name, condition) → seed of the noise``; None:
            :func:`maskdn.noise.noise_seed`. A run with workers (``jobs`` > 1) needs it picklable (a
            module-level function or a :func:`functools.partial` of one). Records do not say which
            seeding made them: resume only with the same one.
        on_estimate: Called in this process, in plan order, with ``(record, noisy, estimate)`` for
            every record this call computes (not for resumed ones): the noisy input and the method's
            estimate, float ``[3, h, w]`` CPU tensors (the estimate as returned, not clamped). When
            given, all work runs in this process.
        reuse: Records of earlier runs (e.g. another ``results.json``) to take instead of computing
            the records with the same identity (:func:`record_key`). They must come from the same
            methods (the same weights), which the records cannot show. Unlike resumed records they
            are not written to ``OUT/results.json`` unless planned here.

    Returns:
        The records, in plan order (dataset, image, condition, method, passes), then any other
        records of ``OUT/results.json``: ``{dataset, image, method, passes, noise, level, psnr, ssim,
        [lpips,] seed, [crop,] [bf16,] [tile,] [attn_mask_ratio]}`` with ``noise`` ``"real"`` and ``level`` None for real-noise
        pairs.

    Raises:
        MaskdnError: Invalid ``passes``/``jobs``/``crop`` or noise specs, a ``device`` this machine lacks
            (:func:`maskdn.devices.resolve_device`), no folders or an empty one,
            a dataset name given twice, no noises for clean images, unknown or duplicate methods, a
            method returning the wrong shape, or an unreadable ``results.json``.
    """
    check_passes(passes)
    check_int("jobs", jobs)
    device = resolve_device(device)
    if crop:
        check_int("crop", crop)
    crop = crop or 0
    conds_noise = list(dict.fromkeys(str(parse_noise(n)) for n in noises))
    resolved = _resolve_all(methods, passes, device, bf16, tile, attn_mask_ratio)
    if not data_dirs:
        raise MaskdnError("no dataset folders given")
    datasets: list[tuple[str, list[Sample]]] = []
    for d in data_dirs:
        if isinstance(d, tuple):
            name, samples = str(d[0]), list(d[1])[:limit]
        else:
            name, samples = Path(d).resolve().name, load_dataset(d, limit)
        if not samples:
            raise MaskdnError(f"{name if isinstance(d, tuple) else d}: no images")
        if any(name == n for n, _ in datasets):
            raise MaskdnError(f"{d if not isinstance(d, tuple) else name}: dataset name {name} given twice")
        datasets.append((name, samples))
    if not conds_noise and any(all(s.noisy is None for s in samples) for _, samples in datasets):
        raise MaskdnError("no noises given for the clean-image folders")

    notes: list[str] = []
    scorer = None
    if lpips is not False:
        from .perceptual import LpipsScorer, lpips_status

        status = lpips_status(lpips_backbone)
        if status.available:
            scorer = LpipsScorer(status.backbone, device=device)
        else:
            notes.append(status.reason + ".")

    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        make_output_dir(out)
    results_path = None if out is None else out / _RESULTS
    try:
        previous = [] if results_path is None else load_results(results_path)
    except MaskdnError as e:
        raise MaskdnError(f"{e}; cannot resume from it: move it away to start afresh") from None
    done: dict[tuple, dict] = {record_key(r): r for r in previous}
    for r in reuse:
        done.setdefault(record_key(r), dict(r))

    def conditions_of(samples: list[Sample]) -> list[str]:
        return [REAL] if any(s.noisy is not None for s in samples) else conds_noise

    first_name, first_samples = datasets[0]
    first = first_samples[0]
    gallery_conds = conditions_of(first_samples)[:GALLERY_NOISES]
    variant = ((f"/crop{crop}" if crop else "") + ("/bf16" if bf16 else "") + (f"/tile{tile}" if tile else "")
               + (f"/ratio{attn_mask_ratio:g}" if attn_mask_ratio is not None else ""))
    gallery = None if out is None else _Gallery(out / _GALLERY_CACHE, first_name, first.name, seed, variant)
    first_clean = center_crop(first.clean, crop)
    box = _gallery_side(*first_clean.shape[-2:])
    method_labels = [method_label(m.name, k) for m in resolved for k in m.pass_counts if m.name != "noisy"]

    # the plan, in order; a built-in not defined under a condition (bm3d-oracle) has no record there
    extra = {**({"crop": crop} if crop else {}), **({"bf16": True} if bf16 else {}), **({"tile": tile} if tile else {}),
             **({"attn_mask_ratio": float(attn_mask_ratio)} if attn_mask_ratio is not None else {})}
    plan: list[_Unit] = []
    for dname, samples in datasets:
        for idx, s in enumerate(samples):
            for cond in conditions_of(samples):
                noise, level = _condition(cond)
                show = gallery is not None and dname == first_name and idx == 0 and cond in gallery_conds
                for m in resolved:
                    if m.classical and not defined_for(m.name, cond):
                        if m.name == "bm3d-oracle" and _ORACLE_NOTE not in notes:
                            notes.append(_ORACLE_NOTE)
                        continue
                    for k in m.pass_counts:
                        rec = {"dataset": dname, "image": s.name, "method": m.name, "passes": k,
                               "noise": noise, "level": level}
                        key = record_key({**rec, "seed": seed, **extra})
                        plan.append(_Unit(key, rec, s, cond, m, k, box if show and m.name != "noisy" else None))
    planned = [u.key for u in plan]
    order = {k: i for i, k in enumerate(planned)}
    # resumed records are not recomputed: their gallery crops come from the cache. Rerun are only those
    # without LPIPS when it is scored now, and, when the reports (which draw the gallery) are written,
    # the gallery's units whose crop the cache lacks (a run resumed from records alone, on another
    # machine): deterministic, so they give the same record.
    def crop_missing(u: _Unit) -> bool:
        return (reports and u.box is not None
                and method_label(u.method.name, u.passes) not in gallery.panels.get(u.cond, {}))

    todo = [u for u in plan
            if u.key not in done or (scorer is not None and "lpips" not in done[u.key]) or crop_missing(u)]
    new: dict[tuple, dict] = {}

    def merged() -> list[dict]:
        keys = set(planned)
        ordered = [new.get(k) or done[k] for k in planned if k in new or k in done]
        return ordered + [r for r in previous if record_key(r) not in keys and record_key(r) not in new]

    state = {"written": time.monotonic(), "dirty": False}

    def flush(force: bool = False) -> None:
        if results_path is None or not state["dirty"]:
            return
        if force or time.monotonic() - state["written"] >= WRITE_EVERY_S:
            _write_results(results_path, merged())
            if gallery is not None:
                gallery.save()
            state.update(written=time.monotonic(), dirty=False)

    label = progress if isinstance(progress, str) else "bench"
    bar = tqdm(total=len(todo), desc=label, unit="run", disable=not progress, dynamic_ncols=True)
    if len(plan) > len(todo):
        bar.set_postfix_str(f"{len(plan) - len(todo)} resumed")

    def finish(u: _Unit, scores: dict[str, float], est: Tensor | None, gallery_crop: np.ndarray | None) -> dict:
        rec = {**u.rec, **scores}
        if scorer is not None:
            rec["lpips"] = scorer(est, center_crop(u.sample.clean, crop))
        rec["seed"] = seed
        rec.update(extra)
        new[u.key] = rec
        if gallery_crop is not None and gallery is not None:
            gallery.add(u.cond, method_label(u.method.name, u.passes), gallery_crop, scores["psnr"])
        state["dirty"] = True
        bar.update(1)
        flush()
        return rec

    if gallery is not None:
        gallery.clean = _crop_u8(first_clean, box)
        for cond in gallery_conds:
            if "noisy input" not in gallery.panels.get(cond, {}):
                noisy, clean = noisy_pair(first, cond, seed, crop, noise_seeding)
                gallery.add(cond, "noisy input", _crop_u8(noisy, box), psnr(noisy, clean))
                state["dirty"] = True

    pool: ProcessPoolExecutor | None = None
    pending: dict[Future, _Unit] = {}

    def payload(u: _Unit) -> tuple:
        return (u.method.name, u.sample, u.cond, seed, u.box, scorer is not None, with_ssim, crop, noise_seeding,
                on_estimate is not None)

    def in_worker(u: _Unit) -> bool:  # models in workers on the CPU only (one process per GPU is enough)
        return jobs > 1 and on_estimate is None and (
            u.method.classical or (u.method.source is not None and torch.device(device).type == "cpu"))

    def submit(u: _Unit) -> Future:
        if u.method.classical:
            return pool.submit(_classical_unit, *payload(u))
        return pool.submit(_model_unit, u.method.source, max(u.method.pass_counts), bf16, tile, attn_mask_ratio,
                           u.passes, *payload(u)[1:])

    def drain(block: bool) -> None:
        ready = wait_futures(list(pending), return_when="FIRST_COMPLETED")[0] if block else [f for f in pending if f.done()]
        for f in sorted(ready, key=lambda f: order[pending[f].key]):  # finished together: plan order
            u = pending.pop(f)
            scores, gallery_crop, est8, _ = f.result()
            finish(u, scores, None if est8 is None else est8.float() / 255, gallery_crop)

    ok = False
    try:
        if any(in_worker(u) for u in todo):
            pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
            for u in todo:
                if in_worker(u):
                    pending[submit(u)] = u
        cached: tuple[tuple, tuple[Tensor, Tensor]] | None = None  # the noisy pair of the last (dataset, image, condition)
        for u in todo:
            if in_worker(u):
                continue
            ident = (u.rec["dataset"], u.sample.name, u.cond)
            if u.method.classical:  # the same function as in a worker: the same record
                scores, gallery_crop, est8, est = _classical_unit(*payload(u))
            else:
                bar.set_postfix_str(f"{u.method.name} {u.rec['dataset']}/{u.sample.name} {u.cond}", refresh=False)
                if cached is None or cached[0] != ident:
                    cached = (ident, noisy_pair(u.sample, u.cond, seed, crop, noise_seeding))
                scores, gallery_crop, est8, est = _method_unit(u.method, u.passes, *payload(u)[1:], device=device,
                                                               pair=cached[1])
            rec = finish(u, scores, None if est8 is None else est8.float() / 255, gallery_crop)
            if on_estimate is not None:
                if cached is None or cached[0] != ident:
                    cached = (ident, noisy_pair(u.sample, u.cond, seed, crop, noise_seeding))
                on_estimate(dict(rec), cached[1][0], est)
            drain(block=False)
        while pending:
            drain(block=True)
        ok = True
    finally:
        if pool is not None:
            pool.shutdown(wait=ok, cancel_futures=True)
        bar.close()
        flush(force=True)  # keep whatever finished, also on an error or an interrupt
    records = merged()
    if results_path is not None and not results_path.exists():
        _write_results(results_path, records)
    small = {(r["dataset"], r["image"]) for r in records if "ssim" in r and r["ssim"] is None}
    if small:
        notes.append(f"SSIM left blank for {len(small)} image(s) smaller than its {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} "
                     "window (and for the means that include them); PSNR is scored for all.")
    if reports and out is not None:
        from . import report

        gal = gallery.as_dict(gallery_conds, method_labels) if gallery is not None else None
        report.write_reports(records, out, gal, notes=notes)
    return records
