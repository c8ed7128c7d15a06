"""Scoring a model on folders of images: mean PSNR (and SSIM) per dataset and noise.

A folder is either clean images (noise is added, seeded per image) or real-noise pairs named
``*_real.*`` / ``*_mean.*`` (as PolyU), scored under the condition ``real`` (:mod:`maskdn.datasets`);
pairs in any other layout come as two folders matched by file name (:func:`maskdn.datasets.load_pairs`,
given here as a ``(name, samples)`` dataset). The noisy image of a clean one is a pure function of
(image name, noise, seed), so scores are reproducible and comparable between models. This is the small
evaluation that ``maskdn models`` reports; the full benchmark (LPIPS, classical baselines, plots) is
:mod:`maskdn.generalization`, whose loop this one runs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Sample
from .devices import module_device
from .errors import MaskdnError
from .generalization import model_method, resolve_method, run_bench
from .model import MaskedSwinIR
from .noise import parse_noise
from .report import condition_of, write_text

#: The formats :func:`write_scores` writes, by the output's suffix.
SCORE_FORMATS = (".csv", ".json")

Dataset = str | Path | tuple[str, Sequence[Sample]]


def evaluate_rows(
    model: MaskedSwinIR | None,
    data: Sequence[Dataset],
    noises: Sequence[str],
    *,
    seed: int = 0,
    passes: int = 1,
    limit: int | None = None,
    tile: int | None = None,
    progress: bool = True,
    crop: int | None = 0,
    bf16: bool = False,
    ssim: bool = True,
    reuse: Iterable[Mapping[str, Any]] = (),
    reuse_method: str | None = None,
) -> list[dict]:
    """Mean PSNR and SSIM of ``model``'s output per dataset and condition, one row each.

    The records come from :func:`maskdn.generalization.run_bench` in memory (the benchmark's loop:
    the same noisy inputs and the same seeded model runs), without LPIPS or files. The model runs
    where it is (its inputs are moved to its device).

    Args:
        model: The denoiser, or None to score the noisy input itself, the reference every denoiser
            must beat.
        data: Dataset folders (:func:`maskdn.datasets.load_dataset`, named after the folder) or
            ``(name, samples)`` pairs (e.g. :func:`maskdn.datasets.load_pairs`).
        noises: Noise specs (``name:level``) for the clean-image datasets.
        seed: Seeds the noise (:func:`maskdn.noise.noise_seed`) and every model run.
        passes: Averaged stochastic passes per image (int >= 1).
        limit: The first ``limit`` images of each dataset (None: all).
        tile: Denoise in ``tile``×``tile`` tiles (None: whole images).
        progress: Show a progress bar on stderr.
        crop: Score the central ``crop``×``crop`` window, the noise added to the whole image first
            (:func:`maskdn.generalization.noisy_pair`); 0 or None: whole images.
        bf16: Run the model under bfloat16 autocast.
        ssim: Also score SSIM (:func:`maskdn.metrics.ssim`); False leaves it out (faster).
        reuse: Records of earlier benchmark runs (:func:`maskdn.generalization.load_results`): those of
            ``reuse_method`` with this evaluation's identity (dataset, image, condition, passes, seed,
            crop; :func:`maskdn.generalization.record_key`) are taken instead of recomputed, so records
            made with a tile, bf16 or a set attention-mask ratio never are. They must come from the
            same weights and attention-mask ratio as ``model``, which the records cannot show.
        reuse_method: The model's name in ``reuse`` (:func:`maskdn.generalization.method_name` of
            what ``maskdn bench --model`` was given; ``noisy`` for the noisy input).

    Returns:
        ``[{"dataset", "condition", "images", "psnr", ["ssim"]}, ...]`` in dataset then condition order:
        means over images of the PSNR in dB (2 decimals) and SSIM in [0, 1] (4 decimals), both on
        8-bit RGB levels as BasicSR/KAIR compute them (:mod:`maskdn.metrics`). Conditions are keyed
        as written in ``noises`` (``real`` for real-noise pairs).

    Raises:
        MaskdnError: An invalid noise spec, pass count, tile or crop, an empty or unreadable folder,
            or ``reuse`` together with ``tile`` or ``bf16``.
    """
    spelled = {str(parse_noise(n)): n for n in noises}  # canonical name:level → as the caller wrote it
    method = (resolve_method("noisy") if model is None
              else model_method(model, "model", [passes], tile=tile, bf16=bf16, device=module_device(model)))
    if reuse and (tile or bf16):  # the tile and bf16 of `method` are not in its records' identity
        raise MaskdnError("reusing benchmark records works for whole images in float32 only (no tile, no bf16)")
    prior = [{**r, "method": method.name} for r in reuse if r.get("method") == reuse_method]
    records = run_bench(list(data), [method], list(noises), None, seed=seed, passes=passes, limit=limit,
                        progress="evaluate" if progress else False, lpips=False, with_ssim=ssim, crop=crop,
                        reuse=prior)
    per: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        cond = condition_of(r)
        per.setdefault((r["dataset"], spelled.get(cond, cond)), []).append(r)
    rows = []
    for (name, cond), recs in per.items():
        row = {"dataset": name, "condition": cond, "images": len(recs),
               "psnr": round(float(np.mean([r["psnr"] for r in recs])), 2)}
        if ssim:
            scored = [r["ssim"] for r in recs if r.get("ssim") is not None]  # None: smaller than the SSIM window
            row["ssim"] = round(float(np.mean(scored)), 4) if len(scored) == len(recs) else None
        rows.append(row)
    return rows


def evaluate(
    model: MaskedSwinIR | None, folders: Sequence[Dataset], noises: Sequence[str], **options: Any
) -> dict[str, dict[str, float]]:
    """Mean PSNR of ``model``'s output per dataset and condition: :func:`evaluate_rows` without SSIM.

    Args:
        model: The denoiser (run where it is), or None to score the noisy input itself, the reference
            every denoiser must beat.
        folders: Dataset folders (:func:`maskdn.datasets.load_dataset`) or ``(name, samples)`` pairs.
        noises: Noise specs (``name:level``) for the clean-image folders.
        **options: The keyword options of :func:`evaluate_rows` but ``ssim`` (``seed``, ``passes``,
            ``limit``, ``tile``, ``progress``, ``crop``, ``bf16``); an unknown one is a ``TypeError``.

    Returns:
        ``{dataset: {condition: PSNR}}``: the mean over images of the PSNR in dB on 8-bit RGB levels
        (:func:`maskdn.metrics.psnr`, as BasicSR/KAIR), rounded to 2 decimals. Conditions are keyed as
        written in ``noises`` (``real`` for real-noise folders).

    Raises:
        MaskdnError: As :func:`evaluate_rows`.
    """
    out: dict[str, dict[str, float]] = {}
    for r in evaluate_rows(model, folders, noises, ssim=False, **options):
        out.setdefault(r["dataset"], {})[r["condition"]] = r["psnr"]
    return out


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """A markdown table of :func:`evaluate`'s scores: datasets as rows, conditions as columns.

    Args:
        scores: ``{dataset: {condition: PSNR in dB}}``.

    Returns:
        The table (no trailing newline), PSNRs with 2 decimals, ``–`` where a dataset lacks a condition.
    """
    return rows_table([{"dataset": d, "condition": c, "psnr": v} for d, per in scores.items() for c, v in per.items()])


def rows_table(rows: Sequence[dict]) -> str:
    """A markdown table of :func:`evaluate_rows`: datasets as rows, conditions as columns.

    Args:
        rows: The rows (``dataset``, ``condition``, ``psnr`` in dB, optional ``ssim`` in [0, 1]).

    Returns:
        The table (no trailing newline); cells ``PSNR / SSIM`` (2 and 4 decimals), or the PSNR alone
        when the rows have no SSIM; ``–`` where a dataset lacks a condition.
    """
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        text = f"{r['psnr']:.2f}" + (f" / {r['ssim']:.4f}" if r.get("ssim") is not None else "")
        cells.setdefault(r["dataset"], {})[r["condition"]] = text
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    lines = ["| dataset | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for name, per in cells.items():
        lines.append(f"| {name} | " + " | ".join(per.get(c, "–") for c in conditions) + " |")
    return "\n".join(lines)


def check_scores_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :func:`write_scores` can write that format, else one line.

    Args:
        path: The output file.

    Returns:
        ``Path(path)``.

    Raises:
        MaskdnError: ``"<path>: write scores as .csv or .json"``, or ``"<path>: is a folder"``.
    """
    path = Path(path)
    if path.suffix.lower() not in SCORE_FORMATS:
        raise MaskdnError(f"{path}: write scores as {' or '.join(SCORE_FORMATS)} (the suffix picks the format)")
    if path.is_dir():
        raise MaskdnError(f"{path}: is a folder; give a {' or '.join(SCORE_FORMATS)} file")
    return path


def write_scores(rows: Sequence[dict], path: str | Path, protocol: dict | None = None) -> Path:
    """Write :func:`evaluate_rows`' rows as CSV or JSON (by ``path``'s suffix), atomically.

    CSV: a header ``dataset,condition,images,psnr[,ssim]`` and one line per row. JSON:
    ``{"protocol": protocol, "rows": rows}``.

    Args:
        rows: The rows (PSNR in dB, SSIM in [0, 1]).
        path: A ``.csv`` or ``.json`` file (its folder must exist).
        protocol: What produced the scores (model, seed, passes, ...), stored in the JSON.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: Another suffix (:func:`check_scores_path`), or the file cannot be written
            (:func:`maskdn.io.atomic_write`).
    """
    path = check_scores_path(path)
    if path.suffix.lower() == ".json":
        return write_text(path, json.dumps({"protocol": protocol or {}, "rows": list(rows)}, indent=2) + "\n")
    fields = ["dataset", "condition", "images", "psnr"] + (["ssim"] if any("ssim" in r for r in rows) else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return write_text(path, buf.getvalue())
