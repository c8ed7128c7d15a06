"""Reports of benchmark records (see :mod:`maskdn.generalization`): summary tables, curves and a crop gallery.

Every file is written atomically. Records are dicts ``{dataset, image, method, passes, noise, level,
psnr, ssim, [lpips,] seed}``; a condition is ``noise:level`` (``real`` for real-noise pairs). A metric
is summarized for a group only when every record of the group has it (LPIPS may be absent).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write

__all__ = [
    "LEVEL_LABELS",
    "IN_DISTRIBUTION",
    "condition_of",
    "dataset_tables",
    "family_winners",
    "generalization_ranking",
    "ranking_markdown",
    "rule_choice",
    "level_label",
    "method_label",
    "plot_curves",
    "plot_gallery",
    "pyplot",
    "save_figure",
    "summarize",
    "summary_markdown",
    "winners_markdown",
    "write_reports",
    "write_summary_csv",
    "write_summary_md",
    "write_text",
]


def condition_of(r: Mapping[str, Any]) -> str:
    """``"gaussian:25"`` for a record of noise gaussian, level 25; ``"real"`` when there is no level.

    Args:
        r: A benchmark record with ``noise`` (str) and optionally ``level`` (number or None).

    Returns:
        ``"<noise>:<level:g>"``, or ``noise`` alone when ``level`` is missing or None.

    Raises:
        KeyError: ``r`` has no ``noise``.
    """
    return r["noise"] if r.get("level") is None else f"{r['noise']}:{float(r['level']):g}"


def method_label(method: str, passes: int) -> str:
    """``model`` for one pass, ``model ×4`` for four averaged passes.

    Args:
        method: The method name.
        passes: The number of averaged passes (anything ``int()`` accepts).

    Returns:
        ``method`` when ``int(passes) == 1``, else ``"<method> ×<passes>"``.
    """
    return method if int(passes) == 1 else f"{method} ×{int(passes)}"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


#: The per-image metrics a record may carry, in table order.
METRICS = ("psnr", "ssim", "lpips")


def summarize(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Mean PSNR, SSIM (and LPIPS) over images per (dataset, method, passes) × condition, first-seen order.

    Each row: ``{dataset, method, passes, label, noise, level, condition, images, psnr, ssim, lpips}``;
    a metric missing from any record of the group is NaN (``lpips`` is None when no record has it).

    Args:
        records: Benchmark records (see the module docstring); PSNR in dB and SSIM computed on 8-bit
            levels (0–255) as BasicSR/KAIR do (:mod:`maskdn.metrics`), LPIPS (lower is better) optional.

    Returns:
        One dict per group in first-seen order: ``passes`` int, ``level`` float or None, ``images`` the
        record count, ``psnr`` mean in dB, ``ssim`` mean in [0, 1], ``lpips`` mean, NaN or None.

    Raises:
        KeyError: A record lacks ``dataset``, ``method``, ``passes`` or ``noise``.
    """
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["dataset"], r["method"], int(r["passes"]), condition_of(r))
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "dataset": r["dataset"], "method": r["method"], "passes": int(r["passes"]),
                "label": method_label(r["method"], r["passes"]), "noise": r["noise"],
                "level": None if r.get("level") is None else float(r["level"]),
                "condition": key[3], "_n": 0, "_values": {m: [] for m in METRICS},
            }
        g["_n"] += 1
        for m in METRICS:
            if r.get(m) is not None:
                g["_values"][m].append(float(r[m]))
    rows = []
    for g in groups.values():
        n, values = g.pop("_n"), g.pop("_values")
        means = {m: _mean(v) if len(v) == n else math.nan for m, v in values.items()}
        if not values["lpips"]:
            means["lpips"] = None
        rows.append({**g, "images": n, **means})
    return rows


#: The conditions the rule of :func:`generalization_ranking` leaves out: the training noise of every
#: bundled model trained on Gaussian σ=15 alone (the protocol of masked training and of IDF).
IN_DISTRIBUTION = ("gaussian:15",)


def generalization_ranking(records: Iterable[Mapping[str, Any]], exclude: Sequence[str] = IN_DISTRIBUTION) -> list[dict]:
    """maskdn's default-model rule: mean PSNR out of distribution, every dataset weighted equally.

    Per method (one-pass records only) and dataset: the mean over the dataset's conditions, except
    ``exclude``, of each condition's mean PSNR over images (:func:`summarize`). Its score is the mean
    of those dataset means, so a 100-image real-noise set (PolyU, one condition ``real``) weighs as
    much as a 28-condition synthetic grid. A method is ranked only when it has every condition of
    every dataset in ``records`` with as many images as any other method there; otherwise its
    score is None and ``missing`` says what it lacks.

    Args:
        records: Benchmark records (:mod:`maskdn.generalization`), typically of several ``results.json``
            files (the Kodak24/CBSD68 grid and PolyU).
        exclude: The in-distribution conditions (``noise:level``) left out.

    Returns:
        One dict per method, best score first, unranked methods last (in first-seen order):
        ``{method, score, datasets: {dataset: mean PSNR in dB or None}, missing: [str]}``.

    Raises:
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    left_out = set(exclude)
    rows = [r for r in summarize(records) if r["passes"] == 1 and r["condition"] not in left_out]
    cells: dict[str, dict[str, dict[str, tuple[int, float]]]] = {}  # method → dataset → condition → (n, psnr)
    needed: dict[str, dict[str, int]] = {}  # dataset → condition → most images any method has
    for r in rows:
        cells.setdefault(r["method"], {}).setdefault(r["dataset"], {})[r["condition"]] = (r["images"], r["psnr"])
        conds = needed.setdefault(r["dataset"], {})
        conds[r["condition"]] = max(conds.get(r["condition"], 0), r["images"])
    out = []
    for method, by_dataset in cells.items():
        means: dict[str, float | None] = {}
        missing: list[str] = []
        for dataset, conds in needed.items():
            have = by_dataset.get(dataset, {})
            short = [c for c, n in conds.items() if have.get(c, (0, math.nan))[0] < n or math.isnan(have[c][1])]
            if short:
                missing.append(f"{dataset}: {len(short)} of {len(conds)} conditions incomplete")
                means[dataset] = None
            else:
                means[dataset] = _mean([have[c][1] for c in conds])
        score = None if missing else _mean(list(means.values()))
        out.append({"method": method, "score": score, "datasets": means, "missing": missing})
    ranked = sorted((r for r in out if r["score"] is not None), key=lambda r: -r["score"])
    return ranked + [r for r in out if r["score"] is None]


def rule_choice(ranking: Sequence[Mapping[str, Any]], candidates: Iterable[str]) -> tuple[str | None, str]:
    """The model the default-model rule picks among ``candidates`` (the bundled models), and why.

    It picks only when every candidate that appears in ``ranking`` is ranked: a candidate with
    incomplete measurements might be the best one, so until it is complete the rule picks none.

    Args:
        ranking: :func:`generalization_ranking`'s rows.
        candidates: Method names eligible as the default (``maskdn.zoo.names()``).

    Returns:
        ``(name, sentence)``: the best-scoring candidate and the datasets it was chosen on, or None
        with the reason (no candidate measured, or which are incomplete).
    """
    names = set(candidates)
    rows = [r for r in ranking if r["method"] in names]
    short = [r["method"] for r in rows if r["score"] is None]
    if not rows:
        return None, "no bundled model was measured: the rule picks none"
    if short:
        return None, f"{', '.join(short)} lack measurements (see above): the rule picks none until they are complete"
    datasets = ", ".join(rows[0]["datasets"])
    return rows[0]["method"], f"by this rule, on {datasets}, the default model is {rows[0]['method']}"


def ranking_markdown(ranking: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`generalization_ranking`: rank, method, each dataset's mean, the score.

    Args:
        ranking: Its rows, in its order.

    Returns:
        The table (PSNR in dB, 2 decimals; ``–`` for what a method lacks, with the reason under it).
    """
    datasets = list(dict.fromkeys(d for r in ranking for d in r["datasets"]))
    lines = ["| rank | method | " + " | ".join(datasets) + " | mean |", "|---" * (len(datasets) + 3) + "|"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for i, r in enumerate(ranking, 1):
        rank = str(i) if r["score"] is not None else "–"
        lines.append(f"| {rank} | {r['method']} | " + " | ".join(fmt(r["datasets"].get(d)) for d in datasets)
                     + f" | {fmt(r['score'])} |")
    unranked = [f"{r['method']} is not ranked: {'; '.join(r['missing'])}." for r in ranking if r["missing"]]
    lines += [""] + unranked if unranked else []
    return "\n".join(lines)


def family_winners(records: Iterable[Mapping[str, Any]], exclude: Sequence[str] = IN_DISTRIBUTION) -> list[dict]:
    """Where each method wins: per dataset and noise family, the best mean PSNR and its lead.

    A noise family is a record's ``noise`` (``gaussian``, ``poisson``, ``real``, ...); its score per
    method is the mean over the family's levels (except ``exclude``) of each condition's mean PSNR over
    images (:func:`summarize`, one-pass records only). Only methods with every level of the family, each
    on as many images as any method has there (:func:`generalization_ranking`'s test), are compared, so
    a partial run never wins by missing its hard levels or images.

    Args:
        records: Benchmark records (:mod:`maskdn.generalization`).
        exclude: Conditions (``noise:level``) left out: by default the training noise, as in
            :func:`generalization_ranking`.

    Returns:
        One dict per (dataset, noise family) in first-seen order: ``{dataset, noise, levels: [condition],
        means: {method: mean PSNR in dB}, best: method, lead: dB ahead of the next method (None when
        only one is compared), won: {method: how many of the family's conditions it is best on}}``.

    Raises:
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    left_out = set(exclude)
    rows = [r for r in summarize(records) if r["passes"] == 1 and r["condition"] not in left_out]
    most: dict[tuple[str, str], int] = {}  # (dataset, condition) → most images any method has
    for r in rows:
        most[(r["dataset"], r["condition"])] = max(most.get((r["dataset"], r["condition"]), 0), r["images"])
    groups: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # (dataset, noise) → method → condition → psnr
    for r in rows:
        if not math.isnan(r["psnr"]) and r["images"] == most[(r["dataset"], r["condition"])]:
            groups.setdefault((r["dataset"], r["noise"]), {}).setdefault(r["method"], {})[r["condition"]] = r["psnr"]
    out = []
    for (dataset, noise), by_method in groups.items():
        levels = list(dict.fromkeys(c for conds in by_method.values() for c in conds))
        full = {m: conds for m, conds in by_method.items() if len(conds) == len(levels)}
        means = {m: _mean([conds[c] for c in levels]) for m, conds in full.items()}
        order = sorted(means, key=lambda m: -means[m])
        won = {m: 0 for m in order}
        for c in levels:
            won[max(order, key=lambda m: full[m][c])] += 1
        out.append({"dataset": dataset, "noise": noise, "levels": levels, "means": means, "best": order[0],
                    "lead": means[order[0]] - means[order[1]] if len(order) > 1 else None, "won": won})
    return out


def _winner_cell(w: Mapping[str, Any] | None) -> str:
    if w is None:
        return "–"
    lead = "" if w["lead"] is None else f"; +{w['lead']:.2f}"
    return f"{w['best']} ({w['means'][w['best']]:.2f}{lead})"


def winners_markdown(winners: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`family_winners`: a row per noise family, a column per dataset.

    Args:
        winners: Its rows.

    Returns:
        The table; each cell ``best method (mean PSNR; +lead over the next)``, ``–`` where the dataset
        has no such noise; under it, per dataset, how many conditions each method is best on.
    """
    datasets = list(dict.fromkeys(w["dataset"] for w in winners))
    noises = list(dict.fromkeys(w["noise"] for w in winners))
    cell = {(w["dataset"], w["noise"]): w for w in winners}
    lines = ["| noise (levels) | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for noise in noises:
        levels = max((len(cell[(d, noise)]["levels"]) for d in datasets if (d, noise) in cell), default=0)
        cells = [_winner_cell(cell.get((d, noise))) for d in datasets]
        lines.append(f"| {noise} ({levels}) | " + " | ".join(cells) + " |")
    lines.append("")
    for d in datasets:
        counts = sum((Counter(w["won"]) for w in winners if w["dataset"] == d), Counter())
        total = sum(len(w["levels"]) for w in winners if w["dataset"] == d)  # each level has one winner
        ranked = ", ".join(f"{m} {n}" for m, n in counts.most_common())
        lines.append(f"- {d}, conditions won (of {total}): {ranked}.")
    return "\n".join(lines)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`maskdn.io.atomic_write`).

    Args:
        path: The file to write (its folder must exist).
        text: The whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`maskdn.io.atomic_write`); a partly written
            file never replaces the old one.
    """
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_summary_csv(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """The summary as a long CSV: one row per dataset × method × condition (means over images).

    Columns: ``dataset, method, passes, label, noise, level, condition, images, psnr, ssim`` and
    ``lpips`` when any group has it; PSNR (dB) with 4 decimals, SSIM 5, LPIPS 4 (empty when absent,
    e.g. SSIM of images smaller than its window).

    Args:
        records: Benchmark records (see the module docstring); PSNR in dB and SSIM computed on 8-bit
            levels (0–255) as BasicSR/KAIR do (:mod:`maskdn.metrics`), LPIPS (lower is better) optional.
        path: The CSV file to write (its folder must exist).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`maskdn.io.atomic_write`).
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    rows = summarize(records)
    fields = ["dataset", "method", "passes", "label", "noise", "level", "condition", "images", "psnr", "ssim"]
    if any(r["lpips"] is not None for r in rows):
        fields.append("lpips")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        lp = row["lpips"]
        w.writerow({**row, "level": "" if row["level"] is None else f"{row['level']:g}",
                    "psnr": f"{row['psnr']:.4f}", "ssim": "" if math.isnan(row["ssim"]) else f"{row['ssim']:.5f}",
                    "lpips": "" if lp is None or math.isnan(lp) else f"{lp:.4f}"})
    return write_text(path, buf.getvalue())


def _tables(rows: list[dict]) -> dict[str, tuple[list[str], list[str], dict[tuple[str, str], dict]]]:
    """Per dataset: (method labels, conditions, {(label, condition): row})."""
    out: dict[str, tuple[list[str], list[str], dict]] = {}
    for row in rows:
        labels, conds, cells = out.setdefault(row["dataset"], ([], [], {}))
        if row["label"] not in labels:
            labels.append(row["label"])
        if row["condition"] not in conds:
            conds.append(row["condition"])
        cells[(row["label"], row["condition"])] = row
    return out


def dataset_tables(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """One Markdown table per dataset: methods as rows, conditions as columns, best PSNR in bold.

    Args:
        records: Benchmark records (see the module docstring); PSNR in dB and SSIM computed on 8-bit
            levels (0–255) as BasicSR/KAIR do (:mod:`maskdn.metrics`), LPIPS (lower is better) optional.

    Returns:
        ``{dataset: (images, table)}`` in first-seen order: the most images any cell averages, and the
        table, cells ``PSNR (dB, 2 decimals) / SSIM (3 decimals)[ / LPIPS]`` (LPIPS when any record of
        ``records`` has it), ``–`` where a method has no result for a condition or a metric is blank
        (SSIM of images smaller than its window).

    Raises:
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    rows = summarize(records)
    has_lpips = any(r["lpips"] is not None for r in rows)
    out = {}
    for dataset, (labels, conds, cells) in _tables(rows).items():
        lines = ["| method | " + " | ".join(conds) + " |", "|---" * (len(conds) + 1) + "|"]
        best = {}
        for c in conds:
            vals = [cells[(lb, c)]["psnr"] for lb in labels if (lb, c) in cells and not math.isnan(cells[(lb, c)]["psnr"])]
            best[c] = max(vals) if vals else None
        for lb in labels:
            row = []
            for c in conds:
                cell = cells.get((lb, c))
                if cell is None:
                    row.append("–")
                    continue
                text = f"{cell['psnr']:.2f} / " + ("–" if math.isnan(cell["ssim"]) else f"{cell['ssim']:.3f}")
                if has_lpips:
                    lp = cell["lpips"]
                    text += " / –" if lp is None or math.isnan(lp) else f" / {lp:.3f}"
                row.append(f"**{text}**" if best[c] is not None and cell["psnr"] == best[c] else text)
            lines.append(f"| {lb} | " + " | ".join(row) + " |")
        out[dataset] = (max((c["images"] for c in cells.values()), default=0), "\n".join(lines))
    return out


def summary_markdown(records: Iterable[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """Markdown: a heading, then :func:`dataset_tables`' table of each dataset under its own heading.

    ``notes`` (one line each, e.g. why LPIPS is absent) are listed under the heading.

    Args:
        records: Benchmark records, as for :func:`dataset_tables`.
        notes: Lines listed as bullets under the heading.

    Returns:
        The Markdown text.

    Raises:
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    records = list(records)
    has_lpips = any(r.get("lpips") is not None for r in records)  # as dataset_tables decides, from its summary
    what = "PSNR (dB) / SSIM / LPIPS (lower is better)" if has_lpips else "PSNR (dB) / SSIM"
    parts = ["# Benchmark summary", "", f"Mean {what} over images; best PSNR per column in **bold**.", ""]
    if notes:
        parts += [f"- {n}" for n in notes] + [""]
    for dataset, (n, table) in dataset_tables(records).items():
        parts += [f"## {dataset} ({n} image{'s' if n != 1 else ''})", "", table, ""]
    return "\n".join(parts)


def write_summary_md(records: Iterable[Mapping[str, Any]], path: str | Path, notes: Sequence[str] = ()) -> Path:
    """Write :func:`summary_markdown` to ``path`` atomically.

    Args:
        records: Benchmark records, as for :func:`summary_markdown`.
        path: The Markdown file to write (its folder must exist).
        notes: Lines listed under the heading.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`maskdn.io.atomic_write`).
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    return write_text(path, summary_markdown(records, notes))


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed), imported on first use.

    Returns:
        The :mod:`matplotlib.pyplot` module (the backend is forced to Agg on every call).

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically at 120 dpi (tight bounding box) and close it.

    Args:
        fig: The :class:`matplotlib.figure.Figure`; closed afterwards, also on a failure.
        path: The file; its suffix names the format (``.png`` when it has none).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`maskdn.io.atomic_write`).
    """
    plt = pyplot()
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


#: What the level of each noise of :data:`maskdn.noise.NOISES` is, for the curves' x-axis; the meaning
#: of each is in that table's descriptions. JPEG's quality falls as the noise grows, so its axis is
#: drawn reversed: every panel then runs from milder (left) to stronger (right).
LEVEL_LABELS: dict[str, str] = {
    "gaussian": "σ (0–255 scale)",
    "correlated": "σ before the 3×3 box filter (0–255)",
    "poisson": "α (Poisson scale)",
    "speckle": "variance v",
    "saltpepper": "density d",
    "jpeg": "JPEG quality q (reversed: lower q, stronger →)",
    "camera": "level 1–5 (stronger →)",
    "mixture": "level 1–5 (stronger →)",
}
#: Noises whose level falls as the noise gets stronger (their axis is reversed).
DESCENDING_LEVELS = frozenset({"jpeg"})


def level_label(noise: str) -> str:
    """The x-axis label of a noise's level (:data:`LEVEL_LABELS`), ``"level"`` for a noise not listed.

    Args:
        noise: The noise name (``gaussian``, ``jpeg``, ...).

    Returns:
        The label, e.g. ``"σ (0–255 scale)"``.
    """
    return LEVEL_LABELS.get(noise, "level")


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path, dataset: str | None = None) -> Path:
    """PSNR and SSIM against the level, one panel per noise type, one line per method.

    Two rows (PSNR, SSIM) per dataset with synthetic noise, stacked (only ``dataset`` when given). Each
    panel's x-axis names its noise's level (:func:`level_label`; JPEG's quality axis reversed, so
    stronger noise is to the right everywhere); a noise scored at one level only is drawn as labelled
    points (the value written beside each) at that one tick. Real-noise groups (no level) are left out;
    with no synthetic-noise group at all, a small figure saying so is written instead.

    Args:
        records: Benchmark records (see the module docstring); PSNR in dB and SSIM computed on 8-bit
            levels (0–255) as BasicSR/KAIR do (:mod:`maskdn.metrics`), LPIPS (lower is better) optional.
        path: The image file; its suffix names the format (:func:`save_figure`).
        dataset: Plot this dataset only (None: every dataset with synthetic noise).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`save_figure`).
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    plt = pyplot()
    rows = [r for r in summarize(records) if r["level"] is not None]
    datasets = [dataset] if dataset is not None else list(dict.fromkeys(r["dataset"] for r in rows))
    rows = [r for r in rows if r["dataset"] in datasets]
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if not noises:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no synthetic-noise results to plot", ha="center", va="center")
        return save_figure(fig, path)
    n = len(noises)
    fig, axes = plt.subplots(2 * len(datasets), n, figsize=(2.8 * n + 0.5, 5.2 * len(datasets)), squeeze=False)
    for d, name in enumerate(datasets):
        for j, noise in enumerate(noises):
            levels = sorted({r["level"] for r in rows if r["noise"] == noise})
            for i, metric in enumerate(("psnr", "ssim")):
                ax = axes[2 * d + i][j]
                for lb in labels:
                    pts = sorted((r["level"], r[metric]) for r in rows
                                 if r["dataset"] == name and r["noise"] == noise and r["label"] == lb)
                    if pts:
                        xs, ys = zip(*pts)
                        line, = ax.plot(xs, ys, marker="o", markersize=3 if len(levels) > 1 else 5,
                                        linewidth=1.2 if len(levels) > 1 else 0, label=lb)
                        if len(levels) == 1:  # one level: labelled points, not a lone dot on a bare axis
                            ax.annotate(f"{ys[0]:.2f}" if metric == "psnr" else f"{ys[0]:.3f}", (xs[0], ys[0]),
                                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=7,
                                        color=line.get_color())
                if len(levels) == 1:
                    ax.set_xticks(levels, [f"{levels[0]:g}"])
                    span = abs(levels[0]) or 1.0
                    ax.set_xlim(levels[0] - 0.5 * span, levels[0] + 0.9 * span)  # room for the labels
                if noise in DESCENDING_LEVELS:
                    ax.invert_xaxis()
                if i == 0:
                    ax.set_title(f"{name}: {noise}", fontsize=9)
                else:
                    ax.set_xlabel(level_label(noise), fontsize=8)
                if j == 0:
                    ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
                ax.grid(True, alpha=0.3)
                ax.tick_params(labelsize=7)
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # a legend with every method, wherever it appears
        for h, nm in zip(*ax.get_legend_handles_labels()):
            if nm not in names:
                handles.append(h)
                names.append(nm)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    fig.suptitle("Datasets: " + ", ".join(datasets))
    fig.tight_layout(rect=(0, 0.07 / len(datasets), 1, 1 - 0.05 / len(datasets)))
    return save_figure(fig, path)


def plot_gallery(gallery: Mapping[str, Any], path: str | Path) -> Path:
    """A grid of center crops: one row per condition (noisy input, then each method), PSNR under each.

    ``gallery`` is what :func:`maskdn.generalization.run_bench` collects for the first image: ``{"title": str,
    "clean": uint8 HxWx3 or None, "rows": [{"condition": str, "panels": [(label, uint8 HxWx3, psnr or
    None), ...]}, ...]}``. PSNRs are those of the whole image, not of the crop.

    Args:
        gallery: The dict above; images are uint8 arrays ``[h, w, 3]`` (levels 0–255), PSNRs in dB
            (``inf`` shown as ``∞ dB``, None shows nothing). With no rows, a small figure saying
            "no crops to show" is written.
        path: The image file; its suffix names the format (:func:`save_figure`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: The file cannot be written (:func:`save_figure`).
    """
    plt = pyplot()
    rows = list(gallery.get("rows") or [])
    clean = gallery.get("clean")
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no crops to show", ha="center", va="center")
        return save_figure(fig, path)
    ncols = max(len(r["panels"]) for r in rows) + (clean is not None)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 2.2 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        panels = list(row["panels"])
        if clean is not None:
            panels = [("clean", clean, None)] + panels
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panels):
                ax.axis("off")
                continue
            label, img, score = panels[j]
            ax.imshow(np.asarray(img), interpolation="nearest")
            ax.set_title(label, fontsize=8)
            under = "" if score is None else ("∞ dB" if math.isinf(score) else f"{score:.2f} dB")
            ax.set_xlabel(under, fontsize=8)
            if j == 0:
                ax.set_ylabel(row["condition"], fontsize=8)
    fig.suptitle(str(gallery.get("title", "")), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def write_reports(
    records: Sequence[Mapping[str, Any]], out_dir: str | Path, gallery: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> list[Path]:
    """``summary.csv``, ``summary.md`` (with ``notes``), ``curves.png`` and (with ``gallery``) ``gallery.png``.

    Args:
        records: Benchmark records (see the module docstring); PSNR in dB and SSIM computed on 8-bit
            levels (0–255) as BasicSR/KAIR do (:mod:`maskdn.metrics`), LPIPS (lower is better) optional.
        out_dir: The existing folder to write into.
        gallery: Crops for :func:`plot_gallery` (None: no gallery).
        notes: Lines listed under the heading of ``summary.md``.

    Returns:
        The written paths, in the order above.

    Raises:
        MaskdnError: A file cannot be written (:func:`maskdn.io.atomic_write`).
        KeyError: A record lacks a required key (:func:`summarize`).
    """
    out = Path(out_dir)
    paths = [
        write_summary_csv(records, out / "summary.csv"),
        write_summary_md(records, out / "summary.md", notes),
        plot_curves(records, out / "curves.png"),
    ]
    if gallery is not None:
        paths.append(plot_gallery(gallery, out / "gallery.png"))
    return paths
