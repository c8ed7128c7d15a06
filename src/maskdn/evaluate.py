"""Scoring a model on folders of images: mean PSNR per dataset and noise.

A folder is either clean images (noise is added, seeded per image) or real-noise pairs named
``*_real.*`` / ``*_mean.*`` (as PolyU), scored under the condition ``real``. The noisy image of a clean
one is a pure function of (image name, noise, seed), so scores are reproducible and comparable
between models. This is the small evaluation that ``maskdn models`` reports; the full benchmark
(SSIM, LPIPS, classical baselines, plots) is :mod:`maskdn.bench`, whose loop this one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from .errors import MaskdnError
from .io import expand_inputs, read_image, to_float_rgb
from .model import MaskedSwinIR
from .noise import parse_noise

REAL = "real"


@dataclass(frozen=True)
class Sample:
    """One test image: its name, the clean image and, for real-noise pairs, the noisy one."""

    name: str
    clean: Tensor
    noisy: Tensor | None = None


def _load(path: Path) -> Tensor:
    return to_float_rgb(read_image(path))[0]


def load_dataset(folder: str | Path, limit: int | None = None) -> list[Sample]:
    """The samples of ``folder``: real-noise pairs when it holds ``*_real.*`` files, else clean images."""
    paths = expand_inputs([folder])
    real = {p.stem[: -len("_real")]: p for p in paths if p.stem.endswith("_real")}
    if real:
        means = {p.stem[: -len("_mean")]: p for p in paths if p.stem.endswith("_mean")}
        missing = sorted(set(real) - set(means))
        if missing:
            raise MaskdnError(f"{folder}: {missing[0]}_real has no matching {missing[0]}_mean image")
        keys = sorted(real)[:limit]
        return [Sample(k, _load(means[k]), _load(real[k])) for k in keys]
    return [Sample(p.stem, _load(p)) for p in paths[:limit]]


def evaluate(
    model: MaskedSwinIR | None,
    folders: list[str | Path],
    noises: list[str],
    *,
    seed: int = 0,
    passes: int = 1,
    limit: int | None = None,
    tile: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB, 2 decimals) of ``model``'s output per dataset (folder name) and condition.

    Conditions are keyed as given in ``noises`` (``real`` for real-noise folders). ``model=None``
    scores the noisy input itself, the reference every denoiser must beat. The records come from
    :func:`maskdn.bench.run_bench` in memory (the benchmark's loop: the same noisy inputs and the same
    seeded model runs), without SSIM, LPIPS or files.
    """
    from .bench import model_method, resolve_method, run_bench
    from .report import condition_of

    spelled = {str(parse_noise(n)): n for n in noises}  # canonical name:level → as the caller wrote it
    method = resolve_method("noisy") if model is None else model_method(model, "model", [passes], tile=tile)
    records = run_bench(folders, [method], list(noises), None, seed=seed, passes=passes, limit=limit,
                        progress="evaluate" if progress else False, lpips=False, with_ssim=False)
    per: dict[str, dict[str, list[float]]] = {}
    for r in records:
        cond = condition_of(r)
        per.setdefault(r["dataset"], {}).setdefault(spelled.get(cond, cond), []).append(float(r["psnr"]))
    return {name: {cond: round(float(np.mean(v)), 2) for cond, v in conds.items()} for name, conds in per.items()}


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """A markdown table: datasets as rows, conditions as columns."""
    conditions = list(dict.fromkeys(c for per in scores.values() for c in per))
    lines = ["| dataset | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for name, per in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]:.2f}" if c in per else "–" for c in conditions) + " |")
    return "\n".join(lines)
