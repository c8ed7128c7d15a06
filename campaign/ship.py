"""Ship a campaign cool-down pair: into the model zoo, the benchmark records and the README.

The pair is the cool-downs of ``masked`` and ``baseline`` (``campaign.PAIR``) at the same patches, each
benchmarked by its run's process (``campaign/bench/``). Shipping it

1. scores each export on the full test sets with ``maskdn evaluate --record`` (the benchmark's records
   reused where they cover the same images) into ``src/maskdn/weights/RUN-LABEL.safetensors``, the
   zoo name (``masked-125k``, ``baseline-1m``, ...);
2. removes the campaign pair shipped before it (its weights and its records), leaving every other
   model as it is;
3. adds the pair's benchmark records to ``docs/bench/results-{grid,polyu}.json.gz`` under the zoo
   names, after checking that the campaign's noisy inputs score as the README's do (same protocol);
4. redraws ``docs/bench/``'s curves, gallery and summaries (``maskdn bench`` resumes every run from the
   records and computes only the gallery's crops) and ``ranking.json`` (``maskdn rank``);
5. rewrites the README's generated blocks (``benchmarks/readme.py``; its comparisons with the papers
   move to the newest bundled pair, :func:`maskdn.weights.featured_pair`) and ``docs/training.md``'s
   success targets;
6. says which model the default-model rule picks now. When it is not ``maskdn.zoo.DEFAULT_MODEL``,
   change that constant (``tests/test_readme.py`` fails until it agrees).

What the README says in words about the pair is left to a person. Every step can be rerun: a zoo file
already scored from the same weights is kept.

    python campaign/ship.py 1000000            # the pair at 1,000,000 patches
    python campaign/ship.py 125008 --jobs 2    # 2 worker processes for the gallery's crops
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


campaign = _module(HERE / "campaign.py", "campaign")
ROOT = campaign.ROOT


def label(patches: int) -> str:
    """A short count for a zoo name: 125,008 → ``125k``, 1,000,000 → ``1m``, 1,500,000 → ``1.5m``, 160 → ``160``."""
    if patches >= 1_000_000:
        return f"{patches / 1e6:g}m"
    return f"{round(patches / 1000)}k" if patches >= 1000 else str(patches)


def zoo_dir(root: Path) -> Path:
    return root / "src" / "maskdn" / "weights"


def docs_bench(root: Path) -> Path:
    return root / "docs" / "bench"


def pair_at(root: Path, patches: int, plan=campaign.BENCH_PLAN) -> dict[str, dict]:
    """The cool-down records (``cooldowns.json``) of both runs of the pair at ``patches``.

    Raises:
        MaskdnError: a run has no cool-down there (the message lists where it has), or its benchmark
            has a part still to run.
    """
    from maskdn.errors import MaskdnError

    records = campaign.read_cooldowns(root)
    pair = {}
    for run in campaign.PAIR:
        mine = [r for r in records if r["run"] == run]
        found = [r for r in mine if r["patches"] == patches]
        if not found:
            have = ", ".join(f"{r['patches']:,}" for r in mine) or "none"
            raise MaskdnError(f"{run} has no cool-down at {patches:,} patches (its cool-downs: {have})")
        todo = [p for p, _, _ in plan if not found[0].get("bench", {}).get(p)]
        if todo:
            raise MaskdnError(f"{run}'s cool-down at {patches:,} patches is not benchmarked yet ({', '.join(todo)} to run; "
                              "its process does it: campaign/resume.sh)")
        pair[run] = found[0]
    return pair


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def _maskdn(args: list[str]) -> None:
    """Run a ``maskdn`` command in this process; its failure (already printed as one line) stops the ship."""
    from maskdn.cli import main
    from maskdn.errors import MaskdnError

    if main(args) != 0:
        raise MaskdnError(f"maskdn {args[0]} failed (above)")


def score(root: Path, record: dict, dest: Path, datasets: list[Path], noises: list[str] | None = None) -> str:
    """Step 1: ``maskdn evaluate --record`` of one export on the full ``datasets`` into ``dest``."""
    from maskdn.weights import read_metadata

    weights = root / record["weights"]
    if dest.is_file() and read_metadata(dest)["training"].get("scores") and _same_weights(weights, dest):
        return f"{dest.relative_to(root)}: already scored from {record['weights']}"
    args = ["evaluate", "--model", str(weights), "--data", *map(str, datasets),
            "--reuse", *(str(root / f) for f in record["bench"].values()), "--record", str(dest)]
    _maskdn(args + (["--noise", *noises] if noises else []))
    return f"{dest.relative_to(root)}: scored on {', '.join(d.name for d in datasets)}"


def _write_gz(path: Path, records: list[dict]) -> None:
    from maskdn.io import atomic_write

    with atomic_write(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(records, f, indent=0)


def pair_records(root: Path, pair: dict[str, dict], names: dict[str, str], part: str) -> list[dict]:
    """The pair's records of one benchmark part, under their zoo names.

    Raises:
        MaskdnError: the campaign's ``noisy`` records differ from the README's (``docs/bench``) on the
            same image and condition: the two were not made by the same protocol, so they cannot share
            a table.
    """
    from maskdn.errors import MaskdnError
    from maskdn.generalization import method_name, read_records, record_key

    path = docs_bench(root) / f"results-{part}.json.gz"
    noisy = {record_key(r): r["psnr"] for r in read_records(path) if r["method"] == "noisy"}
    added = []
    for run, cd in pair.items():
        ours = method_name(root / cd["weights"])
        for r in campaign._load_results(root / cd["bench"][part]):
            if r["method"] == "noisy":
                k = record_key(r)
                if k in noisy and abs(noisy[k] - r["psnr"]) > 1e-6:
                    raise MaskdnError(f"{cd['bench'][part]}: noisy {r['image']} under {r['noise']}:{r['level']} scores "
                                      f"{r['psnr']:.4f} dB against {noisy[k]:.4f} in {path.name}: not the README's protocol")
            elif r["method"] == ours:
                added.append({**r, "method": names[run]})
    return added


def merge_records(root: Path, part: str, added: list[dict], drop: set[str]) -> None:
    """Step 3 for one benchmark part: ``added`` replaces the records of the methods ``drop``."""
    from maskdn.generalization import read_records

    path = docs_bench(root) / f"results-{part}.json.gz"
    _write_gz(path, [r for r in read_records(path) if r["method"] not in drop] + added)


def _reduced_png(src: Path, dest: Path) -> None:
    """``src`` as a 256-colour PNG (a fifth of the size for line plots; the README's figures are)."""
    from PIL import Image

    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        Image.open(src).convert("RGB").quantize(256).save(tmp, format="PNG", optimize=True)


def _jpeg(src: Path, dest: Path) -> None:
    from PIL import Image

    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        Image.open(src).convert("RGB").save(tmp, format="JPEG", quality=90)


def redraw(root: Path, data_root: Path, plan=campaign.BENCH_PLAN, noises: list[str] | None = None,
           jobs: int = 1) -> list[str]:
    """Step 4: ``maskdn bench`` of every method in ``docs/bench``'s records, resumed from them (only the
    gallery's crops are computed), its reports copied into ``docs/bench/``."""
    from maskdn.generalization import PAPER_GRID, read_records, run_bench

    zoo, docs, lines = zoo_dir(root), docs_bench(root), []
    for i, (part, datasets, limit) in enumerate(plan):
        records = read_records(docs / f"results-{part}.json.gz")
        methods = [str(zoo / f"{m}.safetensors") if (zoo / f"{m}.safetensors").is_file() else m
                   for m in dict.fromkeys(r["method"] for r in records)]
        out = root / "runs" / "campaign" / "ship" / part
        out.mkdir(parents=True, exist_ok=True)
        run_bench([data_root / d for d in datasets], methods, noises or PAPER_GRID, out, passes=1, limit=limit,
                  progress=f"ship {part}", jobs=jobs, reports=True, lpips=False, reuse=records)
        stem = "summary-" + "-".join(d.lower() for d in datasets)
        for suffix in (".csv", ".md"):
            shutil.copyfile(out / f"summary{suffix}", docs / f"{stem}{suffix}")
        if i == 0:  # the README shows the first part's curves and gallery
            _reduced_png(out / "curves.png", docs / "curves.png")
            _jpeg(out / "gallery.png", docs / "gallery.jpg")
        lines.append(f"docs/bench: {stem}.md" + (", curves.png, gallery.jpg" if i == 0 else "") + f" redrawn from {out.relative_to(root)}")
    return lines


def ship(root: Path, patches: int, *, data_root: Path | None = None, plan=campaign.BENCH_PLAN,
         noises: list[str] | None = None, evaluate_noises: list[str] | None = None, jobs: int = 1) -> list[str]:
    """Ship the pair at ``patches`` (the steps of the module docstring); returns what it did, line by line.

    Args:
        root: The repository.
        patches: The milestone's patches (``cooldowns.json``'s ``patches``, e.g. 125008 or 1000000).
        data_root: The folder holding the benchmark's datasets (default: beside the runs' training data).
        plan: The benchmark parts (``campaign.BENCH_PLAN``); each part's records are
            ``docs/bench/results-PART.json.gz``.
        noises: The benchmark's noises (default: the paper grid).
        evaluate_noises: ``maskdn evaluate``'s noises for the full-set scores (default: its own).
        jobs: Worker processes for the gallery's crops.

    Raises:
        MaskdnError: the pair is not there or not benchmarked, a dataset is missing, a ``maskdn``
            command fails, or the records disagree (:func:`merge_records`).
    """
    from maskdn.errors import MaskdnError
    from maskdn.generalization import read_records
    from maskdn.report import generalization_ranking, rule_choice

    pair = pair_at(root, patches, plan)
    names = {run: f"{run}-{label(patches)}" for run in pair}
    data_root = data_root or Path(campaign.load(root, campaign.PAIR[0]).data).parent
    every = list(dict.fromkeys(data_root / d for _, datasets, _ in plan for d in datasets))
    missing = [str(d) for d in every if not d.is_dir()]
    if missing:
        raise MaskdnError(f"shipping needs the test sets: {', '.join(missing)} missing")
    added = {part: pair_records(root, pair, names, part) for part, _, _ in plan}  # refuses before any change
    lines = [score(root, pair[run], zoo_dir(root) / f"{names[run]}.safetensors", every, evaluate_noises) for run in pair]

    with campaign._locked(root):
        records = campaign.read_cooldowns(root)
        old = {r["zoo"] for r in records if r.get("zoo") and r["zoo"] not in names.values()}
        for name in sorted(old):
            (zoo_dir(root) / f"{name}.safetensors").unlink(missing_ok=True)
            lines.append(f"removed {name}, the campaign pair shipped before, from the zoo and the records")
        for part, _, _ in plan:
            merge_records(root, part, added[part], old | set(names.values()))
            lines.append(f"docs/bench/results-{part}.json.gz: {len(added[part])} records of {' and '.join(names.values())}")
        for r in records:
            r.pop("zoo", None)
            if r["run"] in pair and r["patches"] == patches:
                r["zoo"] = names[r["run"]]
        campaign._write_cooldowns(root, records)

    lines += redraw(root, data_root, plan, noises, jobs)
    results = [docs_bench(root) / f"results-{part}.json.gz" for part, _, _ in plan]
    with contextlib.chdir(root):  # ranking.json names the results as given: relative to the repository
        _maskdn(["rank", *(str(p.relative_to(root)) for p in results), "-o", "docs/bench/ranking.json"])
    readme = _module(ROOT / "benchmarks" / "readme.py", "readme_tables")
    if readme.main(["--readme", str(root / "README.md"), "--grid", str(results[0]), "--polyu", str(results[-1])]) != 0:
        raise MaskdnError("benchmarks/readme.py could not rewrite the README (above)")
    with campaign._locked(root):
        campaign.write_readme(root)

    from maskdn import zoo

    chosen, why = rule_choice(generalization_ranking([r for p in results for r in read_records(p)]),
                              sorted(p.stem for p in zoo_dir(root).glob("*.safetensors")))
    if chosen == zoo.DEFAULT_MODEL:
        lines.append(f"default model: {why} (unchanged)")
    else:
        lines.append(f"default model: {why}; set DEFAULT_MODEL = {chosen!r} in src/maskdn/zoo.py (it is {zoo.DEFAULT_MODEL!r})")
    lines.append("left to you: the README's words about the pair (\"Masked against unmasked\", the conclusions)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ship.py", description=__doc__.split("\n\n")[0])
    p.add_argument("patches", type=int, help="the milestone's patches, as in campaign/cooldowns.json (e.g. 1000000)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder of Kodak24/, CBSD68/, PolyU/ (default: beside the runs' training data)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the gallery's crops (default 1)")
    a = p.parse_args(argv)
    with contextlib.chdir(ROOT):  # the configs' relative paths are relative to the repository root
        return campaign.report("ship", lambda: ship(ROOT, a.patches, data_root=a.data_root, jobs=a.jobs))

if __name__ == "__main__":
    sys.exit(main())
