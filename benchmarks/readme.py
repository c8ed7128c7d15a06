"""Regenerate the README's benchmark tables from the benchmark records kept in the repository.

The README marks each generated table with a pair of HTML comments (invisible on GitHub)::

    <!-- generated: NAME -->
    ...
    <!-- end: NAME -->

and this script rewrites what lies between them from ``docs/bench/results-grid.json.gz`` (the
Kodak24/CBSD68 grid of ``maskdn bench``), ``docs/bench/results-polyu.json.gz`` (PolyU) and the
bundled weights' metadata. NAME is one of

- ``kodak24``, ``cbsd68``, ``polyu``: that dataset's table of :func:`maskdn.report.dataset_tables`
  under a heading with its image count (``maskdn bench`` writes the same tables to ``summary.md``);
- ``ranking``: the default-model rule over both runs (:func:`maskdn.report.generalization_ranking`,
  what ``maskdn rank`` prints);
- ``wins``: where each method wins, per noise family and dataset (:func:`maskdn.report.family_winners`);
- ``reported``: the papers' reported numbers beside ours on the grid (``benchmarks/reported.py``);
- ``commands``: the two ``maskdn bench`` commands that make those records (their models, methods and
  image limit read off the records);
- ``demo``: the table ``maskdn demo`` printed, from its ``psnr.json`` kept as ``docs/demo-psnr.json``;
- ``scores``: the bundled models' scores on the full test sets, as recorded in their weights files
  by ``maskdn evaluate --record`` (what ``maskdn models`` shows).

A dataset's table is made only from complete records (every method, every condition, the same
images); a README block that the records cannot give is an error saying why. ``--check`` changes
nothing and exits 1 when a block differs from what the records give (the test suite runs it),
naming the block.

    python benchmarks/readme.py                 # rewrite README.md's generated blocks
    python benchmarks/readme.py --check         # exit 1 if any is out of date
    python benchmarks/readme.py --grid bench-grid/ --polyu bench-polyu/   # from fresh runs instead
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

from maskdn.demo import psnr_table
from maskdn.errors import MaskdnError
from maskdn.generalization import read_records
from maskdn.io import atomic_write
from maskdn.report import dataset_tables, family_winners, generalization_ranking, ranking_markdown, winners_markdown
from maskdn.weights import describe_zoo

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
DATASETS = {"kodak24": "Kodak24", "cbsd68": "CBSD68", "polyu": "PolyU"}


def _reported():
    """``benchmarks/reported.py`` (the papers' numbers beside ours), loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("reported", Path(__file__).with_name("reported.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(grid: list[dict], polyu: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """Every block the two runs' records give: ``({name: Markdown}, {name: why it is not given})``.

    A dataset's table is given only when it is complete: every method has every condition on as many
    images as any other (:func:`maskdn.report.generalization_ranking`'s test); the ranking, the wins
    and the reported numbers only when both datasets' tables of the grid and PolyU's are.
    """
    out, why = {}, {}
    for name, dataset in DATASETS.items():
        records = [r for r in grid + polyu if r["dataset"] == dataset]
        short = [f"{r['method']}: {'; '.join(r['missing'])}" for r in generalization_ranking(records, exclude=())
                 if r["missing"]]
        if not records or short:
            why[name] = f"the records of {dataset} are " + ("absent" if not records else f"incomplete ({short[0]})")
            continue
        n, table = dataset_tables(records)[dataset]
        out[name] = f"#### {dataset} ({n} image{'s' if n != 1 else ''})\n\n{table}\n"
    if why:
        why["ranking"] = "needs every table: " + "; ".join(why.values())
        why["reported"] = why["wins"] = why["ranking"]
    else:
        out["ranking"] = ranking_markdown(generalization_ranking(grid + polyu)) + "\n"
        out["wins"] = winners_markdown(family_winners(grid + polyu)) + "\n"
        out["reported"] = _reported().table(grid, ["Kodak24", "CBSD68"])[0] + "\n"
    try:
        out["commands"] = commands_block(grid, polyu)
    except MaskdnError as e:
        why["commands"] = str(e)
    out["scores"] = scores_block(describe_zoo())
    demo = json.loads((ROOT / "docs" / "demo-psnr.json").read_text(encoding="utf-8"))
    out["demo"] = psnr_table(demo["rows"], demo["models"]) + "\n"
    return out, why


def commands_block(grid: list[dict], polyu: list[dict]) -> str:
    """The ``maskdn bench`` commands of the grid and PolyU runs whose records these are, as a bash block:
    the bundled models among their methods (sorted), the built-in methods in the order they appear, and
    the grid's image count per dataset as ``--limit``.

    Raises:
        MaskdnError: a run without records, or a method that is neither a bundled model nor a built-in
            (no command could remake its records).
    """
    from maskdn.generalization import BUILTIN_METHODS
    from maskdn.zoo import names

    if not grid or not polyu:
        raise MaskdnError("needs both runs' records")

    def methods(records: list[dict]) -> str:
        seen = list(dict.fromkeys(r["method"] for r in records))
        models = sorted(m for m in seen if m in names())
        others = [m for m in seen if m not in models]
        unknown = [m for m in others if m not in BUILTIN_METHODS]
        if unknown:
            raise MaskdnError(f"{', '.join(unknown)}: neither a bundled model nor a built-in method")
        return " ".join(f"{flag} {' '.join(ms)}" for flag, ms in (("--model", models), ("--method", others)) if ms)

    datasets = list(dict.fromkeys(r["dataset"] for r in grid))
    limit = max(len({r["image"] for r in grid if r["dataset"] == d}) for d in datasets)
    polyu_sets = list(dict.fromkeys(r["dataset"] for r in polyu))
    lines = [f"maskdn bench --data {' '.join(d + '/' for d in datasets)} {methods(grid)} --passes 1 --limit {limit} "
             "--jobs 2 --out bench-grid/",
             f"maskdn bench --data {' '.join(d + '/' for d in polyu_sets)} {methods(polyu)} --passes 1 --jobs 2 --out bench-polyu/"]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def scores_block(zoo_rows: list[dict]) -> str:
    """The bundled models' recorded scores (``maskdn models``; written by ``maskdn evaluate --record``):
    a row per dataset and model, a column per condition, best per dataset and column in bold; the
    models without recorded scores named under it."""
    scored = [r for r in zoo_rows if r["scores"]]
    datasets = list(dict.fromkeys(d for r in scored for d in r["scores"]))
    conds = list(dict.fromkeys(c for r in scored for d in datasets for c in r["scores"].get(d, {})))
    lines = ["| dataset | model | " + " | ".join(conds) + " |", "|---" * (len(conds) + 2) + "|"]
    for d in datasets:
        have = [r for r in scored if d in r["scores"]]
        best = {c: max((r["scores"][d][c] for r in have if c in r["scores"][d]), default=None) for c in conds}
        for r in have:
            cells = []
            for c in conds:
                v = r["scores"][d].get(c)
                cells.append("–" if v is None else f"**{v:.2f}**" if v == best[c] else f"{v:.2f}")
            lines.append(f"| {d} | `{r['name']}` | " + " | ".join(cells) + " |")
    unscored = [f"`{r['name']}`" for r in zoo_rows if not r["scores"]]
    if unscored:
        lines += ["", f"Not scored on the full test sets yet: {', '.join(unscored)}."]
    return "\n".join(lines) + "\n"


def render(text: str, generated: dict[str, str], why: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with every generated block replaced; also the names of the blocks that changed.

    Raises:
        MaskdnError: a block the records do not give (saying why), or the README has no block.
    """
    changed: list[str] = []

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in generated:
            reason = why.get(name, f"no such block (known: {', '.join([*DATASETS, 'ranking', 'wins', 'reported', 'commands', 'scores', 'demo'])})")
            raise MaskdnError(f"README block {name!r}: {reason}")
        if m["body"] != generated[name]:
            changed.append(name)
        return m.group(1) + generated[name] + m.group(4)

    new = BLOCK.sub(fill, text)
    if not BLOCK.search(text):
        raise MaskdnError("the README has no generated block (<!-- generated: NAME --> ... <!-- end: NAME -->)")
    return new, changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--grid", type=Path, default=ROOT / "docs/bench/results-grid.json.gz",
                   help="records of the Kodak24/CBSD68 grid (results.json, .json.gz, or a bench folder)")
    p.add_argument("--polyu", type=Path, default=ROOT / "docs/bench/results-polyu.json.gz",
                   help="records of the PolyU run (same forms)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    a = p.parse_args(argv)
    try:
        text = a.readme.read_text(encoding="utf-8")
        new, changed = render(text, *blocks(read_records(a.grid), read_records(a.polyu)))
        if a.check:
            for name in changed:
                print(f"readme.py: {a.readme}: block {name!r} differs from the records; "
                      f"run python benchmarks/readme.py", file=sys.stderr)
            if not changed:
                print(f"{a.readme}: every generated block is up to date")
            return 1 if changed else 0
        if changed:
            with atomic_write(a.readme) as tmp:
                tmp.write_text(new, encoding="utf-8")
        print(f"{a.readme}: {', '.join(changed) if changed else 'nothing'} rewritten")
        return 0
    except (MaskdnError, OSError) as e:
        print(f"readme.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
