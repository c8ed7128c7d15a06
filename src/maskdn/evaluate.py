"""Scoring a model on folders of images: mean PSNR per dataset and noise.

A folder is either clean images (noise is added, seeded per image) or real-noise pairs named
``*_real.*`` / ``*_mean.*`` (as PolyU), scored under the condition ``real``. The noisy image of a clean
one is a pure function of (image name, noise, seed), so scores are reproducible and comparable
between models. This is the small evaluation that ``maskdn models`` reports; the full benchmark
(SSIM, classical baselines, plots) builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .errors import MaskdnError
from .inference import denoise_tensor
from .io import expand_inputs, read_image, to_float_rgb
from .metrics import psnr
from .model import MaskedSwinIR
from .noise import apply_noise, noise_seed, parse_noise

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
    """Mean PSNR (dB) of ``model``'s output per dataset (folder name) and condition (noise or ``real``).

    ``model=None`` scores the noisy input itself, the reference every denoiser must beat.
    """
    for spec in noises:
        parse_noise(spec)
    scores: dict[str, dict[str, float]] = {}
    datasets = [(Path(f).name, load_dataset(f, limit)) for f in folders]
    total = sum(len(s) * (1 if any(x.noisy is not None for x in s) else len(noises)) for _, s in datasets)
    bar = tqdm(total=total, desc="evaluate", unit="image", disable=not progress)
    for name, samples in datasets:
        is_real = any(s.noisy is not None for s in samples)
        per: dict[str, list[float]] = {}
        for s in samples:
            conditions = [REAL] if is_real else noises
            for cond in conditions:
                noisy = s.noisy if is_real else apply_noise(s.clean, cond, seed=noise_seed(seed, s.name, cond))
                if model is None:
                    out = noisy
                else:
                    gen = torch.Generator().manual_seed(seed)
                    out = denoise_tensor(model, noisy[None], passes=passes, tile=tile, generator=gen)[0]
                per.setdefault(cond, []).append(psnr(out, s.clean))
                bar.update(1)
        scores[name] = {cond: round(float(np.mean(v)), 2) for cond, v in per.items()}
    bar.close()
    return scores


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """A markdown table: datasets as rows, conditions as columns."""
    conditions = list(dict.fromkeys(c for per in scores.values() for c in per))
    lines = ["| dataset | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for name, per in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]:.2f}" if c in per else "–" for c in conditions) + " |")
    return "\n".join(lines)
