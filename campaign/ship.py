"""Ship a campaign cool-down pair: into the model zoo, the benchmark records and the README.

The pair is the cool-downs of ``masked`` and ``baseline`` (``campaign.PAIR``) at the same patches, each
benchmarked by its run's process (``campaign/bench/``). Shipping it takes the zoo names ``RUN-LABEL``
(``masked-125k``, ``baseline-1m``, ...) and, first, in the work folder ``runs/campaign/ship/``:

1. checks the pair's benchmark records: they must cover exactly the images and conditions of the
   README's benchmark (``docs/bench/results-{grid,polyu}.json.gz``), with ``noisy`` inputs that score
   exactly as the README's (the same protocol);
2. scores each export on the full test sets with ``maskdn evaluate --record`` (the benchmark's records
   reused where they cover the same images);
3. redraws the benchmark's curves, gallery and summaries from the README's records with the pair's
   added (``maskdn bench`` resumes every run from the records and computes only the gallery's crops).

Then it publishes: the two models into ``src/maskdn/weights/``; the campaign pair shipped before (the
one ``cooldowns.json`` marks ``zoo``; ``masked-small`` and the other models stay) out of the zoo and
the records; the records, figures, summaries and ``ranking.json`` (``maskdn rank``) into
``docs/bench/``; the README's generated blocks (``benchmarks/readme.py``: its comparisons with the
papers move to the newest bundled pair, :func:`maskdn.weights.featured_pair`) and ``docs/training.md``'s
success targets. Last it says which model the default-model rule picks now; when it is not
``maskdn.zoo.DEFAULT_MODEL``, change that constant (``tests/test_bench.py`` fails until it agrees).

maskdn must be installed from this checkout (``pip install -e .``: the zoo it reads is the one
shipped into). What the README says in words is left to a person (``campaign/README.md``, "Shipping a
pair", lists where). A rerun finishes an interrupted ship; a model already scored from the same
weights is kept.

    python campaign/ship.py 1000000            # the pair at 1,000,000 patches
    python campaign/ship.py 125008 --jobs 2    # 2 worker processes for the gallery's crops
"""

from __future__ import annotations

import argparse
import contextlib
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


sys.path.insert(0, str(HERE))  # this folder's scripts import each other as siblings (it is not a package)
try:
    import campaign
    import writeup
finally:
    sys.path.pop(0)
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
        todo = campaign.pending_parts(found[0], plan)
        if todo:
            raise MaskdnError(f"{run}'s cool-down at {patches:,} patches is not benchmarked yet ({', '.join(todo)} to run; "
                              "its process does it: campaign/resume.sh)")
        pair[run] = found[0]
    return pair


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two weights files hold equal tensors (False when either cannot be read: score it again)."""
    from safetensors.torch import load_file

    try:
        x, y = load_file(a), load_file(b)
    except Exception:  # a missing, truncated or foreign file is simply not the same weights
        return False
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def _maskdn(args: list[str]) -> None:
    """Run a ``maskdn`` command in this process; its failure (already printed as one line) stops the ship."""
    from maskdn.cli import main
    from maskdn.errors import MaskdnError

    if main(args) != 0:
        raise MaskdnError(f"maskdn {args[0]} failed (above)")


def _scored(path: Path) -> bool:
    from maskdn.errors import MaskdnError
    from maskdn.weights import read_metadata

    try:
        return bool((read_metadata(path)["training"] or {}).get("scores"))
    except MaskdnError:
        return False


def score(root: Path, record: dict, dest: Path, datasets: list[Path], noises: list[str] | None = None,
          threads: int = 1) -> str:
    """Step 1: ``maskdn evaluate --record`` of one export on the full ``datasets`` into ``dest`` (a staging
    file: the zoo gets it only once everything else has worked). A ``dest`` already scored from the same
    weights is kept."""
    weights = root / record["weights"]
    if dest.is_file() and _scored(dest) and _same_weights(weights, dest):
        return f"{dest.name}: already scored from {record['weights']}"
    args = ["evaluate", "--model", str(weights), "--data", *map(str, datasets), "--threads", str(threads),
            "--reuse", *(str(root / f) for f in record["bench"].values()), "--record", str(dest)]
    _maskdn(args + (["--noise", *noises] if noises else []))
    return f"{dest.name}: scored on {', '.join(d.name for d in datasets)}"


def _key(r: dict) -> tuple:
    return r["dataset"], r["image"], r["noise"], r["level"]


def pair_records(root: Path, pair: dict[str, dict], names: dict[str, str], part: str) -> list[dict]:
    """The pair's records of one benchmark part, under their zoo names.

    Raises:
        MaskdnError: a record file is missing or unreadable; a model's records do not cover exactly the
            images and conditions of the README's ``noisy`` records; or the campaign's ``noisy`` records
            differ from the README's (``docs/bench``) on the same image and condition: not the same
            protocol, so the two cannot share a table.
    """
    from maskdn.errors import MaskdnError
    from maskdn.generalization import method_name, read_records, record_key

    path = docs_bench(root) / f"results-{part}.json.gz"
    noisy = {record_key(r): r["psnr"] for r in read_records(path) if r["method"] == "noisy"}
    wanted = {_key(r) for r in read_records(path) if r["method"] == "noisy"}
    added = []
    for run, cd in pair.items():
        ours = method_name(root / cd["weights"])
        records = read_records(root / cd["bench"][part])
        for r in records:
            if r["method"] == "noisy":
                k = record_key(r)
                if k in noisy and abs(noisy[k] - r["psnr"]) > 1e-6:
                    raise MaskdnError(f"{cd['bench'][part]}: noisy {r['image']} under {r['noise']}:{r['level']} scores "
                                      f"{r['psnr']:.4f} dB against {noisy[k]:.4f} in {path.name}: not the README's protocol")
        mine = [{**r, "method": names[run]} for r in records if r["method"] == ours]
        have = {_key(r) for r in mine}
        if have != wanted:
            raise MaskdnError(f"{cd['bench'][part]}: {ours} has {len(have)} image-condition records where {path.name}'s "
                              f"noisy input has {len(wanted)} ({len(wanted - have)} missing, {len(have - wanted)} not in "
                              "the README's benchmark): they cannot share its tables")
        added += mine
    return added


def redraw(root: Path, data_root: Path, records: dict[str, list[dict]], models: dict[str, Path],
           plan=campaign.README_PARTS, noises: list[str] | None = None, jobs: int = 1) -> dict[str, Path]:
    """Step 4, into work folders: ``maskdn bench`` of every method of ``records`` (part → records), each
    from a fresh ``runs/campaign/ship/PART`` so nothing of an earlier ship is drawn, resumed from the
    records (only the gallery's crops are computed); ``models``: name → weights file of the bundled
    models among the methods. Returns part → folder of its reports."""
    from maskdn.generalization import PAPER_GRID, run_bench

    outs = {}
    for part in plan:
        methods = [str(models[m]) if m in models else m for m in dict.fromkeys(r["method"] for r in records[part.name])]
        out = root / "runs" / "campaign" / "ship" / part.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run_bench([data_root / d for d in part.datasets], methods, noises or PAPER_GRID, out, passes=1, limit=part.limit,
                  progress=f"ship {part.name}", jobs=jobs, reports=True, lpips=False, reuse=records[part.name])
        outs[part.name] = out
    return outs


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


def _publish(root: Path, outs: dict[str, Path], plan) -> list[str]:
    """Copy the work folders' summaries (and the first part's curves and gallery) into ``docs/bench``."""
    docs, lines = docs_bench(root), []
    for i, part in enumerate(plan):
        out, stem = outs[part.name], "summary-" + "-".join(d.lower() for d in part.datasets)
        for suffix in (".csv", ".md"):
            campaign._copy_atomic(out / f"summary{suffix}", docs / f"{stem}{suffix}")
        if i == 0:  # the README shows the first part's curves and gallery
            _reduced_png(out / "curves.png", docs / "curves.png")
            _jpeg(out / "gallery.png", docs / "gallery.jpg")
        lines.append(f"docs/bench: {stem}.md" + (", curves.png, gallery.jpg" if i == 0 else "") + " redrawn")
    return lines


def ship(root: Path, patches: int, *, data_root: Path | None = None, plan=campaign.BENCH_PLAN,
         noises: list[str] | None = None, evaluate_noises: list[str] | None = None, jobs: int = 1,
         threads: int = 1) -> list[str]:
    """Ship the pair at ``patches`` (the steps of the module docstring); returns what it did, line by line.

    Everything that can fail runs first, into ``runs/campaign/ship/``: the checks, the scoring, the
    redrawing. Only then do the zoo, ``docs/bench``, ``cooldowns.json``, the README and
    ``docs/training.md`` change.

    Args:
        root: The repository; maskdn must be installed from it (its zoo is the one read).
        patches: The milestone's patches (``cooldowns.json``'s ``patches``, e.g. 125008 or 1000000).
        data_root: The folder holding the benchmark's datasets (default: beside the runs' training data).
        plan: The benchmark parts (``campaign.BENCH_PLAN``), every one done before the pair ships; each
            README part's records are ``docs/bench/results-PART.json.gz``.
        noises: The benchmark's noises (default: the paper grid).
        evaluate_noises: ``maskdn evaluate``'s noises for the full-set scores (default: its own).
        jobs: Worker processes for the gallery's crops.
        threads: PyTorch threads for the scoring and the redrawing (1: beside the campaign's runs).

    Raises:
        MaskdnError: maskdn is installed from another checkout; the pair is not there or not
            benchmarked; a dataset is missing; ``jobs`` or ``threads`` is not a count; a ``maskdn``
            command fails; the records disagree (:func:`pair_records`); or the README could not be
            written from the new records.
    """
    import torch

    from maskdn import zoo
    from maskdn.errors import MaskdnError, check_int
    from maskdn.generalization import read_records
    from maskdn.report import generalization_ranking, rule_choice

    check_int("--jobs", jobs)
    check_int("--threads", threads)
    if zoo.zoo_dir().resolve() != zoo_dir(root).resolve():
        raise MaskdnError(f"maskdn is installed from {zoo.zoo_dir().parent.parent.parent}, not from {root}: its zoo "
                          f"would not be the one shipped into (pip install -e {root})")
    pair = pair_at(root, patches, plan)
    plan = [part for part in plan if part.readme]  # what joins the README's benchmark
    names = {run: f"{run}-{label(patches)}" for run in pair}
    data_root = data_root or Path(campaign.load(root, campaign.PAIR[0]).data).parent
    every = list(dict.fromkeys(data_root / d for part in plan for d in part.datasets))
    missing = [str(d) for d in every if not d.is_dir()]
    if missing:
        raise MaskdnError(f"shipping needs the test sets: {', '.join(missing)} missing")
    added = {part.name: pair_records(root, pair, names, part.name) for part in plan}  # refuses before any change
    old = {r["zoo"] for r in campaign.read_cooldowns(root) if r.get("zoo") and r["zoo"] not in names.values()}
    drop = old | set(names.values())
    merged = {part.name: [r for r in read_records(docs_bench(root) / f"results-{part.name}.json.gz")
                          if r["method"] not in drop] + added[part.name] for part in plan}

    stage = root / "runs" / "campaign" / "ship"
    stage.mkdir(parents=True, exist_ok=True)
    staged = {run: stage / f"{names[run]}.safetensors" for run in pair}
    lines = [score(root, pair[run], staged[run], every, evaluate_noises, threads) for run in pair]
    models = {p.stem: p for p in zoo_dir(root).glob("*.safetensors") if p.stem not in drop} | {
        names[run]: staged[run] for run in pair}
    torch.set_num_threads(threads)
    outs = redraw(root, data_root, merged, models, plan, noises, jobs)

    with campaign._locked(root):
        for run in pair:
            campaign._copy_atomic(staged[run], zoo_dir(root) / staged[run].name)
        for name in sorted(old):
            (zoo_dir(root) / f"{name}.safetensors").unlink(missing_ok=True)
            lines.append(f"removed {name}, the campaign pair shipped before, from the zoo and the records")
        for part in plan:
            campaign.write_records(docs_bench(root) / f"results-{part.name}.json.gz", merged[part.name])
            lines.append(f"docs/bench/results-{part.name}.json.gz: {len(added[part.name])} records of "
                         f"{' and '.join(names.values())}")
        records = campaign.read_cooldowns(root)
        for r in records:
            r.pop("zoo", None)
            if r["run"] in pair and r["patches"] == patches:
                r["zoo"] = names[r["run"]]
        campaign._write_cooldowns(root, records)
    lines += _publish(root, outs, plan)
    results = [docs_bench(root) / f"results-{part.name}.json.gz" for part in plan]
    with contextlib.chdir(root):  # ranking.json names the results as given: relative to the repository
        _maskdn(["rank", *(str(p.relative_to(root)) for p in results), "-o", "docs/bench/ranking.json"])
    readme = _module(ROOT / "benchmarks" / "readme.py", "readme_tables")
    if readme.main(["--readme", str(root / "README.md"), "--grid", str(results[0]), "--polyu", str(results[-1])]) != 0:
        raise MaskdnError("benchmarks/readme.py could not rewrite the README (above)")
    with campaign._locked(root):
        writeup.write_readme(root)

    chosen, why = rule_choice(generalization_ranking([r for rs in merged.values() for r in rs]), zoo.names())
    if chosen is None:
        lines.append(f"default model: {why}; DEFAULT_MODEL stays {zoo.DEFAULT_MODEL!r} until the rule picks one")
    elif chosen == zoo.DEFAULT_MODEL:
        lines.append(f"default model: {why} (unchanged)")
    else:
        lines.append(f"default model: {why}; set DEFAULT_MODEL = {chosen!r} in src/maskdn/zoo.py (it is {zoo.DEFAULT_MODEL!r})")
    lines.append("left to you: the README's words about the bundled models and the pair (campaign/README.md, "
                 "\"Shipping a pair\", lists them), then commit what changed")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ship.py", description=__doc__.split("\n\n")[0])
    p.add_argument("patches", type=int, help="the milestone's patches, as in campaign/cooldowns.json (e.g. 1000000)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder of Kodak24/, CBSD68/, PolyU/ (default: beside the runs' training data)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the gallery's crops (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads for the scoring and the figures (default 1: the campaign's runs keep theirs)")
    a = p.parse_args(argv)
    data_root = a.data_root.resolve() if a.data_root else None  # relative to where the command was typed

    def work() -> list[str]:
        try:
            with contextlib.chdir(ROOT):  # the configs' relative paths are relative to the repository root
                return ship(ROOT, a.patches, data_root=data_root, jobs=a.jobs, threads=a.threads)
        except KeyboardInterrupt:
            from maskdn.errors import MaskdnError

            raise MaskdnError("interrupted: run the same command again to finish (models already scored are kept)") from None

    return campaign.report("ship", work)


if __name__ == "__main__":
    sys.exit(main())
