"""Scoring a model on folders of images: mean PSNR per dataset and noise.

A folder is either clean images (noise is added, seeded per image) or real-noise pairs named
``*_real.*`` / ``*_mean.*`` (as PolyU), scored under the condition ``real`` (:mod:`maskdn.datasets`).
The noisy image of a clean one is a pure function of (image name, noise, seed), so scores are
reproducible and comparable between models. This is the small evaluation that ``maskdn models``
reports; the full benchmark (SSIM, LPIPS, classical baselines, plots) is
:mod:`maskdn.generalization`, whose loop this one runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .generalization import model_method, resolve_method, run_bench
from .model import MaskedSwinIR
from .noise import parse_noise
from .report import condition_of


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
    crop: int | None = 0,
    bf16: bool = False,
) -> dict[str, dict[str, float]]:
    """Mean PSNR of ``model``'s output per dataset (folder name) and condition.

    The records come from :func:`maskdn.generalization.run_bench` in memory (the benchmark's loop:
    the same noisy inputs and the same seeded model runs), without SSIM, LPIPS or files.

    Args:
        model: The denoiser (on the CPU), or None to score the noisy input itself, the reference every
            denoiser must beat.
        folders: Dataset folders (:func:`maskdn.datasets.load_dataset`).
        noises: Noise specs (``name:level``) for the clean-image folders.
        seed: Seeds the noise (:func:`maskdn.noise.noise_seed`) and every model run.
        passes: Averaged stochastic passes per image (int >= 1).
        limit: The first ``limit`` images of each folder (None: all).
        tile: Denoise in ``tile``×``tile`` tiles (None: whole images).
        progress: Show a progress bar on stderr.
        crop: Score the central ``crop``×``crop`` window, the noise added to the whole image first
            (:func:`maskdn.generalization.noisy_pair`); 0 or None: whole images.
        bf16: Run the model under bfloat16 autocast.

    Returns:
        ``{dataset: {condition: PSNR}}``: the mean over images of the PSNR in dB on 8-bit RGB levels
        (:func:`maskdn.metrics.psnr`, as BasicSR/KAIR), rounded to 2 decimals. Conditions are keyed as
        written in ``noises`` (``real`` for real-noise folders).

    Raises:
        MaskdnError: An invalid noise spec, pass count or crop, or an empty or unreadable folder.
    """
    spelled = {str(parse_noise(n)): n for n in noises}  # canonical name:level → as the caller wrote it
    method = (resolve_method("noisy") if model is None
              else model_method(model, "model", [passes], tile=tile, bf16=bf16))
    records = run_bench(folders, [method], list(noises), None, seed=seed, passes=passes, limit=limit,
                        progress="evaluate" if progress else False, lpips=False, with_ssim=False, crop=crop)
    per: dict[str, dict[str, list[float]]] = {}
    for r in records:
        cond = condition_of(r)
        per.setdefault(r["dataset"], {}).setdefault(spelled.get(cond, cond), []).append(float(r["psnr"]))
    return {name: {cond: round(float(np.mean(v)), 2) for cond, v in conds.items()} for name, conds in per.items()}


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """A markdown table of :func:`evaluate`'s scores: datasets as rows, conditions as columns.

    Args:
        scores: ``{dataset: {condition: PSNR in dB}}``.

    Returns:
        The table (no trailing newline), PSNRs with 2 decimals, ``–`` where a dataset lacks a condition.
    """
    conditions = list(dict.fromkeys(c for per in scores.values() for c in per))
    lines = ["| dataset | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for name, per in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]:.2f}" if c in per else "–" for c in conditions) + " |")
    return "\n".join(lines)
