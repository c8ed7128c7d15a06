"""What the papers report next to what maskdn measures on the same conditions: prints a Markdown table.

The reported numbers are constants written down from the papers (sources below); ours are the mean
PSNR over images of a ``maskdn bench`` run (its ``results.json``), one pass, per dataset. Every model
compared was trained on Gaussian σ=15 alone.

- IDF (Kim et al., ICCV 2025, arXiv 2508.19649), Figure 1 (the teaser): its test set is not stated there.
- Masked training (Chen et al., CVPR 2023): Kodak24, read off the paper's figure to about ±0.1 dB
  (``../shared/notes/paper-curves.md`` in this project's workspace; only Poisson, speckle and correlated
  noise are plotted there).

    python benchmarks/reported.py bench-grid/            # the README's grid run (Kodak24 and CBSD68)
    python benchmarks/reported.py bench-grid/results.json --json reported.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from maskdn.errors import MaskdnError
from maskdn.generalization import read_records
from maskdn.report import summarize

# condition → PSNR (dB) as reported
IDF_REPORTED = {"gaussian:50": 25.73, "correlated:55": 27.87, "speckle:0.04": 29.18, "poisson:3.5": 27.47,
                "saltpepper:0.02": 33.38}
# The masked-training paper's Kodak24 curves (Poisson, speckle, correlated; the 14 plotted conditions):
# the masked model and its unmasked baseline, read off the figure to about ±0.1 dB.
MASKED_REPORTED_KODAK24 = {
    "correlated:40": 29.6, "correlated:45": 28.8, "correlated:50": 28.0, "correlated:55": 27.2, "correlated:60": 26.5,
    "speckle:0.018": 31.35, "speckle:0.024": 30.8, "speckle:0.03": 30.15, "speckle:0.036": 29.55, "speckle:0.04": 29.05,
    "poisson:2": 30.4, "poisson:2.5": 28.75, "poisson:3": 26.95, "poisson:3.5": 25.4,
}
BASELINE_REPORTED_KODAK24 = {
    "correlated:40": 29.25, "correlated:45": 27.8, "correlated:50": 26.5, "correlated:55": 25.4, "correlated:60": 24.45,
    "speckle:0.018": 30.6, "speckle:0.024": 28.3, "speckle:0.03": 26.5, "speckle:0.036": 25.15, "speckle:0.04": 24.4,
    "poisson:2": 27.6, "poisson:2.5": 23.8, "poisson:3": 21.2, "poisson:3.5": 19.35,
}


def columns(pair: tuple[str, str]) -> list[tuple[str, dict | str]]:
    """The table's columns: (header, source), a source being a dict of reported numbers or a method name
    measured here; ``pair`` is our (masked, baseline) models shown beside the paper's."""
    masked, baseline = pair
    return [
        ("IDF, reported", IDF_REPORTED),
        ("`idf-g15`, ours", "idf-g15"),
        ("masked SwinIR, reported (Kodak24)", MASKED_REPORTED_KODAK24),
        (f"`{masked}`, ours", masked),
        ("SwinIR baseline, reported (Kodak24)", BASELINE_REPORTED_KODAK24),
        (f"`{baseline}`, ours", baseline),
    ]


def table(records: list[dict], datasets: list[str], pair: tuple[str, str] | None = None) -> tuple[str, dict]:
    """The Markdown table and its numbers: a row per condition of :data:`IDF_REPORTED`; ``pair``: our
    (masked, baseline) models (None: :func:`maskdn.weights.featured_pair`, the newest bundled pair)."""
    if pair is None:
        from maskdn.weights import featured_pair

        pair = featured_pair() or ("masked-small", "baseline-small")
    rows = summarize(records)
    means = {(r["dataset"], r["method"], r["condition"]): r["psnr"] for r in rows if r["passes"] == 1}
    images = {r["dataset"]: r["images"] for r in rows}
    cols = columns(pair)
    head = ["condition"] + [h for h, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    numbers: dict = {}
    for cond in IDF_REPORTED:
        cells = [cond]
        for header, source in cols:
            if isinstance(source, dict):
                v = source.get(cond)
                cells.append("–" if v is None else f"{v:.2f}")
                numbers[f"{header} / {cond}"] = v
                continue
            vals = [means.get((d, source, cond), math.nan) for d in datasets]
            numbers.update({f"{source} / {d} / {cond}": None if math.isnan(v) else v for d, v in zip(datasets, vals)})
            cells.append(" / ".join("–" if math.isnan(v) else f"{v:.2f}" for v in vals))
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Ours: mean PSNR (dB) over the first {' and '.join(f'{images.get(d, 0)} images of {d}' for d in datasets)}"
            f" ({' / '.join(datasets)}), one pass, noisy inputs clipped and 8-bit quantized.")
    return "\n".join(lines) + "\n\n" + note, numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a maskdn bench results.json, or its folder")
    p.add_argument("--datasets", nargs="+", default=["Kodak24", "CBSD68"], help="datasets of the run to show")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    try:
        records = read_records(a.results)
    except MaskdnError as e:
        print(f"reported.py: {e}", file=sys.stderr)
        return 1
    text, numbers = table(records, a.datasets)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"results": str(a.results), "numbers": numbers}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
