"""The campaign's success targets, measured on ``maskdn bench`` records of a masked/baseline pair.

Issue 17 defines success for a masked model and its unmasked baseline trained alike on Gaussian σ=15,
on the README's benchmark (the 16-image Kodak24 and CBSD68 grids of ``maskdn bench``'s paper grid, one
pass, and PolyU's 100 real-noise pairs):

1. out of distribution: the masked model's mean PSNR over the grid's conditions other than Gaussian
   σ=15 at least 1 dB above the baseline's, on Kodak24 and on CBSD68 (each);
2. in distribution: at most 1.5 dB below the baseline on Gaussian σ=15 (each dataset);
3. against the paper: at or above the masked-training paper's masked model on its 14 Kodak24
   conditions (Poisson α 2–3.5, speckle 0.018–0.04, correlated σ 40–60; ``benchmarks/reported.py``).
   The paper's means are over all 24 images, the README's grid's over the first 16: given records of
   all 24 (``--paper-records``; the campaign's ``paper`` benchmark part), the target is measured on
   those, like with like; else on the grid's 16, and the table says so;
4. real noise: PolyU mean PSNR not below the noisy input's.

    python campaign/targets.py RECORDS... --masked masked-small --baseline baseline-small [--json F]
    python campaign/targets.py RECORDS... --paper-records PAPER... --masked M --baseline B

``RECORDS``: ``results.json`` files (or ``.json.gz`` copies, or their folders) holding the grid and
PolyU records of both models and of ``noisy``; ``PAPER``: such files holding the masked model's
records on all of Kodak24 under the paper's conditions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

OOD_MARGIN_DB = 1.0  # target 1: masked − baseline, mean out-of-distribution PSNR, per grid
ID_COST_DB = 1.5  # target 2: the most the masked model may lose on the training noise
GRIDS = ("Kodak24", "CBSD68")
REAL = "PolyU"
TRAINING_NOISE = "gaussian:15"


def paper_masked() -> dict[str, float]:
    """The paper's masked-model Kodak24 values (``benchmarks/reported.py``, loaded from the repository)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reported.py"
    spec = importlib.util.spec_from_file_location("reported", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.MASKED_REPORTED_KODAK24)


def _means(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], tuple[float, int]]:
    """(dataset, method, condition) → (mean PSNR over images, image count), one-pass records only."""
    from maskdn.generalization import record_key
    from maskdn.report import summarize

    unique = {record_key(r): r for r in records}  # the same record from two runs counts once
    return {(r["dataset"], r["method"], r["condition"]): (r["psnr"], r["images"])
            for r in summarize(unique.values()) if r["passes"] == 1}


def _pair(means: Mapping[tuple[str, str, str], tuple[float, int]], dataset: str, condition: str, masked: str,
          baseline: str) -> tuple[float, float] | None:
    """Both models' mean PSNR at (dataset, condition) when both have it on as many images, else None."""
    a, b = means.get((dataset, masked, condition)), means.get((dataset, baseline, condition))
    return (a[0], b[0]) if a and b and a[1] == b[1] else None


def differences(records: Iterable[Mapping[str, Any]], masked: str, baseline: str) -> dict[tuple[str, str], float]:
    """``masked`` − ``baseline`` mean PSNR (dB) per (dataset, condition) that both have on as many images
    (one-pass records; duplicates count once): what target 1 averages, condition by condition."""
    return _differences(_means(records), masked, baseline)


def _differences(means: Mapping[tuple[str, str, str], tuple[float, int]], masked: str,
                 baseline: str) -> dict[tuple[str, str], float]:
    return {(d, c): a - b for (d, m, c) in means if m == masked
            for a, b in [_pair(means, d, c, masked, baseline) or (None, None)] if a is not None}


def targets(records: Iterable[Mapping[str, Any]], masked: str, baseline: str, noisy: str = "noisy",
            paper: Mapping[str, float] | None = None,
            paper_records: Iterable[Mapping[str, Any]] | None = None) -> list[dict]:
    """Each success target's measurement for the pair ``masked`` / ``baseline``.

    Only conditions both models have on as many images are compared; a target with no such
    condition is reported as not measured.

    Args:
        records: ``maskdn bench`` records (PSNR in dB); duplicates (the same record key) count once.
        masked, baseline: The two models' method names in the records (weights file stems).
        noisy: The method name of the unprocessed noisy input (``maskdn bench --method noisy``).
        paper: Condition → the paper's masked-model Kodak24 PSNR (default: ``benchmarks/reported.py``).
        paper_records: Records of ``masked`` on Kodak24 under those conditions, on all the images the
            paper averages; when they hold any, target 3 is measured on them alone (not mixed with
            ``records``, whose grid may cover fewer images).

    Returns:
        One dict per target and dataset, in the module docstring's order: ``{target, dataset,
        measured, threshold, met, detail}``: ``measured`` in dB (None when not measured), ``met``
        True/False/None, ``detail`` a short text (conditions compared, worst condition); target 3's
        also ``images``, the fewest images a compared condition's mean is over.

    Raises:
        MaskdnError: ``masked`` or ``baseline`` has no one-pass record (naming the methods there).
    """
    from maskdn.errors import MaskdnError

    means = _means(records)
    present = sorted({m for _, m, _ in means})
    for who in (masked, baseline):
        if who not in present:
            raise MaskdnError(f"no one-pass records of {who!r} (methods there: {', '.join(present) or 'none'})")
    paper = paper_masked() if paper is None else dict(paper)

    def pair(dataset: str, condition: str) -> tuple[float, float] | None:
        return _pair(means, dataset, condition, masked, baseline)

    def row(target: str, dataset: str, measured: float | None, threshold: float, detail: str) -> dict:
        met = None if measured is None else measured >= threshold - 1e-9
        return {"target": target, "dataset": dataset, "measured": measured, "threshold": threshold,
                "met": met, "detail": detail}

    rows = []
    gaps = _differences(means, masked, baseline)
    for ds in GRIDS:
        diffs = [v for (d, c), v in gaps.items() if d == ds and c != TRAINING_NOISE]
        rows.append(row("1. masked − baseline, mean out of distribution", ds, sum(diffs) / len(diffs) if diffs else None,
                        OOD_MARGIN_DB, f"{len(diffs)} conditions, masked ahead on {sum(d > 0 for d in diffs)}"))
    for ds in GRIDS:
        p = pair(ds, TRAINING_NOISE)
        rows.append(row("2. masked − baseline, Gaussian σ=15", ds, None if p is None else p[0] - p[1], -ID_COST_DB,
                        "" if p is None else f"{p[0]:.2f} vs {p[1]:.2f}"))
    full = _means(paper_records) if paper_records is not None else {}
    against = full if any(m == masked for _, m, _ in full) else means
    have = {c: against[("Kodak24", masked, c)] for c in paper if ("Kodak24", masked, c) in against}
    if have:
        gaps = {c: have[c][0] - paper[c] for c in have}
        worst = min(gaps, key=gaps.get)
        counts = sorted({n for _, n in have.values()})
        detail = (f"{sum(g >= -1e-9 for g in gaps.values())} of {len(gaps)} conditions at or above; "
                  f"mean {sum(gaps.values()) / len(gaps):+.2f}; ours on {'–'.join(map(str, counts))} images, "
                  "the paper's on 24")
        rows.append(row("3. masked − paper's masked model (worst condition)", "Kodak24", gaps[worst], 0.0,
                        detail + f"; worst {worst}") | {"images": counts[0]})
    else:
        rows.append(row("3. masked − paper's masked model (worst condition)", "Kodak24", None, 0.0, "no paper conditions"))
    m, n = means.get((REAL, masked, "real")), means.get((REAL, noisy, "real"))
    ok = m and n and m[1] == n[1]
    rows.append(row("4. masked − noisy input", REAL, m[0] - n[0] if ok else None, 0.0,
                    f"{m[0]:.2f} vs {n[0]:.2f} on {m[1]} pairs" if ok else ""))
    return rows


def scores(records: Iterable[Mapping[str, Any]], method: str) -> dict[str, float | None]:
    """One model's summary on the README's benchmark, the quantities the targets compare.

    Args:
        records: ``maskdn bench`` records (PSNR in dB); duplicates (the same record key) count once.
        method: The model's method name in the records.

    Returns:
        ``{"Kodak24 out of distribution", "CBSD68 out of distribution", "Kodak24 gaussian:15",
        "CBSD68 gaussian:15", "PolyU"}`` → mean PSNR in dB (None where the records have none): per
        grid the mean over its conditions other than the training noise (each condition's mean over
        its images, as target 1 averages), the training noise's mean, PolyU's mean over its pairs.
    """
    means = _means(records)
    out: dict[str, float | None] = {}
    for ds in GRIDS:
        ood = [v for (d, m, c), (v, _) in means.items() if d == ds and m == method and c != TRAINING_NOISE]
        out[f"{ds} out of distribution"] = sum(ood) / len(ood) if ood else None
    for ds in GRIDS:
        out[f"{ds} {TRAINING_NOISE}"] = means.get((ds, method, TRAINING_NOISE), (None,))[0]
    out[REAL] = means.get((REAL, method, "real"), (None,))[0]
    return out


def progress_markdown(rows: Sequence[tuple[str, int, Mapping[str, float | None]]]) -> str:
    """Runs' :func:`scores` at successive patch counts as a Markdown table (dB), each cell with its change
    since the same run's previous row in brackets.

    Args:
        rows: ``(run, patches, scores)`` in the order to print; a run's earlier row comes first.
    """
    columns = list(rows[0][2]) if rows else []
    lines = ["| run | patches | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    last: dict[str, Mapping[str, float | None]] = {}
    for run, patches, s in rows:
        before = last.get(run, {})
        cells = []
        for c in columns:
            v, b = s.get(c), before.get(c)
            cells.append("–" if v is None else f"{v:.2f}" + ("" if b is None else f" ({v - b:+.2f})"))
        lines.append(f"| `{run}` | {patches:,} | " + " | ".join(cells) + " |")
        last[run] = s
    return "\n".join(lines)


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` of :func:`targets` as a Markdown table (dB)."""
    lines = ["| target | dataset | measured (dB) | needed (dB) | met | detail |", "|---|---|---|---|---|---|"]
    for r in rows:
        measured = "–" if r["measured"] is None else f"{r['measured']:+.2f}"
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(f"| {r['target']} | {r['dataset']} | {measured} | ≥ {r['threshold']:+.2f} | {met} | {r['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", help="maskdn bench results.json files (.json.gz copies, or their folders)")
    p.add_argument("--masked", required=True, help="the masked model's method name in the records")
    p.add_argument("--baseline", required=True, help="the baseline's method name in the records")
    p.add_argument("--paper-records", nargs="+", default=None,
                   help="results files of the masked model on all of Kodak24 under the paper's conditions "
                        "(target 3 is then measured on them)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    from maskdn.errors import MaskdnError
    from maskdn.generalization import read_records

    try:
        records = [r for src in a.records for r in read_records(src)]
        paper = None if a.paper_records is None else [r for src in a.paper_records for r in read_records(src)]
        rows = targets(records, a.masked, a.baseline, paper_records=paper)
    except MaskdnError as e:
        print(f"targets.py: error: {e}", file=sys.stderr)
        return 1
    print(markdown(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=lambda v: None if math.isnan(v) else v) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
