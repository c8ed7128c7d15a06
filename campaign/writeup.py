"""What the training campaign writes for people to read, redrawn from the runs' states and records.

- ``campaign/README.md``, between its markers: the runs' table (:func:`table`), masked − baseline
  validation at equal patches (:func:`pair_table`) and what the validation curves predict
  (:func:`forecast_text`, ``campaign/forecast.py``);
- ``docs/training.md``, between its markers: the issue's success targets on every benchmarked cool-down
  pair (:func:`targets_text`, ``campaign/targets.py``);
- ``docs/campaign.png`` (:func:`plot`): validation PSNR against patches seen, one panel per noise;
- ``docs/campaign-bench.png`` (:func:`plot_bench`): masked − baseline per condition of the README's grid.

``campaign/campaign.py`` calls :func:`redraw` whenever a run's state, cool-down or benchmark changes,
under the campaign's lock; ``python campaign/campaign.py save`` does it by hand. This folder is not a
package: import this module beside ``campaign`` (``sys.path`` holding ``campaign/``), so both share one
``campaign`` module.
"""

from __future__ import annotations

import math
from pathlib import Path

import campaign
import forecast
import targets

README_BEGIN, README_END = "<!-- campaign table: begin -->", "<!-- campaign table: end -->"
TARGETS_BEGIN, TARGETS_END = "<!-- campaign targets: begin -->", "<!-- campaign targets: end -->"


def redraw(root: Path) -> None:
    """Rewrite the generated blocks of ``campaign/README.md`` and ``docs/training.md`` and both figures."""
    write_readme(root)
    plot(root)
    plot_bench(root)


def table(root: Path) -> str:
    rows = ["| run | masks | iterations | patches seen | training time | latest validation PSNR (dB) | latest cool-down |",
            "|---|---|---|---|---|---|---|"]
    cds = campaign.read_cooldowns(root)
    for name in campaign.run_names(root):
        cfg = campaign.load(root, name)
        summary, hist = campaign.history(root, name)
        it = summary.get("iteration", 0)
        masks = (f"input {cfg.input_mask_range[0]:.0%}–{cfg.input_mask_range[1]:.0%}, attention {cfg.attn_mask_ratio:.0%}"
                 if cfg.input_mask or cfg.attn_mask_ratio else "none")
        val = "–" if not hist else ", ".join(f"{k} {v:.2f}" for k, v in hist[-1]["psnr"].items()) + f" (at {hist[-1]['patches']:,})"
        mine = [c for c in cds if c["run"] == name]
        cd = "–" if not mine else (lambda c: f"{c['patches']:,} patches ({bench_progress(c)}): " + ", ".join(
            f"{k} {v:.2f}" for k, v in c["val_psnr"].items()))(max(mine, key=lambda c: c["iteration"]))
        rows.append(f"| `{name}` | {masks} | {it:,} of {cfg.iterations:,} | {it * cfg.batch_size:,} | "
                    f"{campaign.training_time(summary)} | {val} | {cd} |")
    return "\n".join(rows)


def bench_progress(record: dict, plan=campaign.BENCH_PLAN) -> str:
    """How far the benchmark of a cool-down (an entry of ``cooldowns.json``) is: ``benchmarked``,
    ``benchmark: grid, polyu done`` (the parts done) or ``benchmark: not yet``."""
    pending = campaign.pending_parts(record, plan)
    done = [part.name for part in plan if part.name not in pending]
    return "benchmarked" if not pending else f"benchmark: {', '.join(done) + ' done' if done else 'not yet'}"


def forecast_patches(root: Path) -> int:
    """Where the forecast predicts: the length (patches) :data:`PAIR`'s first run is configured to reach."""
    cfg = campaign.load(root, campaign.PAIR[0])
    return cfg.iterations * cfg.batch_size


def forecast_text(root: Path) -> str:
    """``campaign/forecast.py``'s table for :data:`PAIR` at :func:`forecast_patches`, or "" while a run has no
    validation history or once both have reached that length."""
    hist = {n: campaign.history(root, n)[1] for n in campaign.PAIR}
    if not all(hist.values()):
        return ""
    patches = forecast_patches(root)
    if all(e["patches"] >= patches for e in (h[-1] for h in hist.values())):
        return ""  # nothing left to predict
    rows = forecast.forecast(hist, *campaign.PAIR, patches)
    low, high = (f"{w:g}" for w in forecast.WINDOWS)
    return (f"What the validation curves predict at the runs' length, {patches:,} patches (`python campaign/forecast.py`): "
            f"each run's trend, a line in log2(patches) fitted over its last doubling and over its last two "
            f"(windows ×{low}, ×{high}), extended from its newest point; a range is the two fits' answers:\n\n"
            + forecast.markdown(rows, *campaign.PAIR, patches)
            + f"\n\n{forecast.BACKTEST_INTRO}\n\n" + forecast.backtest_markdown(forecast.backtest(hist), campaign.PAIR))


def benchmarked(root: Path) -> dict[int, dict[str, dict]]:
    """Patches → run → its cool-down record (``cooldowns.json``), for cool-downs whose README benchmark
    (:data:`README_PARTS`) is done; the ``paper`` part may come later (target 3 waits for it)."""
    done: dict[int, dict[str, dict]] = {}
    for r in campaign.read_cooldowns(root):
        if r.get("bench") and all(r["bench"].get(p.name) for p in campaign.README_PARTS):
            done.setdefault(r["patches"], {})[r["run"]] = r
    return done


def bench_records(root: Path, record: dict, parts=campaign.README_PARTS) -> list[dict]:
    """The benchmark records kept for a cool-down (an entry of ``cooldowns.json``) in ``parts`` (those
    done), ``noisy``'s too."""
    files = [record.get("bench", {}).get(p.name) for p in parts]
    return [rec for f in files if f for rec in campaign._load_results(root / f)]


def pair_records(root: Path, runs: dict[str, dict], parts=campaign.README_PARTS) -> tuple[list[dict], str, str]:
    """The benchmark records (of ``parts``) of :data:`PAIR`'s cool-downs ``runs`` (run → ``cooldowns.json``
    entry, one entry of :func:`benchmarked`) and the two models' method names, masked first."""
    from maskdn.generalization import method_name

    return ([rec for n in campaign.PAIR for rec in bench_records(root, runs[n], parts)],
            *(method_name(root / runs[n]["weights"]) for n in campaign.PAIR))


def targets_text(root: Path) -> str:
    """The success targets (``campaign/targets.py``) at every patch count where both runs of :data:`PAIR`
    have a cool-down benchmarked on the README's parts (:func:`benchmarked`; target 3 on the masked
    run's ``paper`` part once it is done), after the shipped pair's (``docs/bench/`` records) for reference;
    then, once a run has two such cool-downs, each run's own scores from one to the next
    (``targets.scores``), and once two pairs are measured, each target's trend to the runs' length."""
    from maskdn.errors import MaskdnError
    from maskdn.generalization import method_name
    from maskdn.weights import describe_zoo, featured_pair

    parts = []
    shipped = [root / "docs" / "bench" / f for f in ("results-grid.json.gz", "results-polyu.json.gz")]
    try:
        zoo = {r["name"]: r for r in describe_zoo()}
    except MaskdnError:  # a broken bundled file: no reference pair, but the runs' own tables still come
        zoo = {}
    pair = featured_pair(list(zoo.values()))
    if pair and all(f.is_file() for f in shipped):
        records = [r for f in shipped for r in campaign._load_results(f)]
        m, b = pair
        how = zoo[m]["training"]
        parts.append(f"The shipped pair (`{m}` against `{b}`, {how.get('patches_seen', 0):,} patches of "
                     f"{how.get('patch_size', '?')}², the README's benchmark), for reference:\n\n"
                     + targets.markdown(targets.targets(records, m, b)))
    done = benchmarked(root)
    measured = {}
    for patches, runs in sorted(done.items()):
        if not all(n in runs for n in campaign.PAIR):
            continue
        records, m, b = pair_records(root, runs)
        paper = bench_records(root, runs[campaign.PAIR[0]], (campaign.PAPER_PART,))  # target 3: the masked model's
        measured[patches] = targets.targets(records, m, b, paper_records=paper)
        parts.append(f"The campaign at {patches:,} patches (`{m}` against `{b}`, cool-downs of "
                     f"{runs[campaign.PAIR[0]]['cooldown']:,} iterations):\n\n" + targets.markdown(measured[patches]))
    progress = [(n, patches, targets.scores(bench_records(root, runs[n]), method_name(root / runs[n]["weights"])))
                for n in campaign.PAIR for patches, runs in sorted(done.items()) if n in runs]
    if any(sum(row[0] == n for row in progress) >= 2 for n in campaign.PAIR):
        parts.append("Each run's own benchmark at its benchmarked cool-downs (mean PSNR in dB; in brackets the "
                     "change since the run's previous one): whether a run's score out of distribution rises or "
                     "falls as it trains on Gaussian σ=15:\n\n" + targets.progress_markdown(progress))
    length = forecast_patches(root) if campaign.PAIR[0] in campaign.run_names(root) else 0
    if len(measured) >= 2 and max(measured) < length:
        parts.append(f"What the benchmarked pairs predict at the runs' length, {length:,} patches "
                     "(`campaign/forecast.py`: each target's least-squares line in log2(patches) through the "
                     "pairs above, extended):\n\n" + forecast.target_markdown(forecast.target_trends(measured, length), length))
    return "\n\n".join(parts) or "No benchmarked cool-down pair yet."


def _write_block(path: Path, begin: str, end: str, body: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of ``path`` (if it has both) with ``body``."""
    if not path.is_file():
        return
    text = path.read_text()
    if begin not in text or end not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    campaign._write_atomic(path, f"{head}{begin}\n{body}\n{end}{tail}")


def pair_table(root: Path) -> str:
    """Validation PSNR of ``masked`` minus ``baseline`` (:data:`PAIR`) wherever both have a point at the same
    patches: a Markdown table (dB), or "" when there is none."""
    (_, a), (_, b) = (campaign.history(root, n) for n in campaign.PAIR)
    at = {e["patches"]: e["psnr"] for e in b}
    rows = [(e["patches"], e["psnr"], at[e["patches"]]) for e in a if e["patches"] in at]
    if not rows:
        return ""
    noises = [n for n in rows[0][1] if n in rows[0][2]]
    lines = [f"`{campaign.PAIR[0]}` − `{campaign.PAIR[1]}`, validation PSNR at the same patches (dB; positive: masking ahead):", "",
             "| patches | " + " | ".join(noises) + " |", "|---" * (len(noises) + 1) + "|"]
    lines += [f"| {p:,} | " + " | ".join(f"{m[n] - s[n]:+.2f}" for n in noises) + " |" for p, m, s in rows]
    return "\n".join(lines)


def write_readme(root: Path) -> None:
    """Redraw ``campaign/README.md``'s tables of the runs and ``docs/training.md``'s targets."""
    both = all(n in campaign.run_names(root) for n in campaign.PAIR)
    extra = [t for t in (pair_table(root), forecast_text(root)) if t] if both else []
    _write_block(campaign.campaign_dir(root) / "README.md", README_BEGIN, README_END, "\n\n".join([table(root), *extra]))
    if (root / "docs" / "training.md").is_file():
        _write_block(root / "docs" / "training.md", TARGETS_BEGIN, TARGETS_END, targets_text(root))


def plot(root: Path, dest: Path | None = None) -> Path | None:
    """``docs/campaign.png``: validation PSNR against patches seen, one panel per noise, every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: campaign.history(root, n)[1] for n in campaign.run_names(root)}
    noises = list(dict.fromkeys(k for h in runs.values() for e in h for k in e["psnr"]))
    if not noises:
        return None
    dest = dest or root / "docs" / "campaign.png"
    fig, axes = plt.subplots(1, len(noises), figsize=(4.2 * len(noises), 3.6), squeeze=False)
    cds = campaign.read_cooldowns(root)
    target = forecast_patches(root) if campaign.PAIR[0] in runs else 0
    for ax, noise in zip(axes[0], noises):
        for i, (name, hist) in enumerate(runs.items()):
            pts = [(e["patches"], e["psnr"][noise]) for e in hist if noise in e["psnr"]]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", marker=".", label=f"{name} (EMA, stable lr)")
            fits = [forecast.trend(pts, w) for w in forecast.WINDOWS]
            if pts and target > pts[-1][0] and None not in fits:  # the forecast's band: both windows' lines
                ends = [[at, at + slope * math.log2(target / pts[-1][0])] for slope, at, _ in fits]
                ax.fill_between([pts[-1][0], target], *ends, color=f"C{i}", alpha=0.18, linewidth=0)
                ax.plot([pts[-1][0], target], [sum(e) / 2 for e in zip(*ends)], color=f"C{i}", linestyle="--",
                        linewidth=1, label=f"{name}: trend to {target:,}")
            cd = [(c["patches"], c["val_psnr"][noise]) for c in cds if c["run"] == name and noise in c["val_psnr"]]
            if cd:
                ax.plot(*zip(*cd), color=f"C{i}", marker="*", markersize=11, linestyle="none",
                        label=f"{name} after cool-down")
        ax.set_title(noise + ("  (training noise)" if noise == "gaussian:15" else "  (never trained on)"), fontsize=9)
        ax.set_xlabel("training patches seen (64², log scale)")
        ax.set_ylabel("PSNR on 16 held-out CBSD432 crops (dB)")
        ax.grid(alpha=0.3)
        ax.set_xscale("log", base=2)
        if target:  # the milestones: the run's length and its halvings
            ax.set_xticks([target / 2**k for k in range(campaign.DOUBLINGS + 2, -1, -1)])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:.0f}k"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest


def plot_bench(root: Path, dest: Path | None = None) -> Path | None:
    """``docs/campaign-bench.png``: masked − baseline (:data:`PAIR`) per condition of the README's grid,
    one panel per grid (Kodak24, CBSD68), one line per benchmarked pair; None (nothing drawn) before
    the first pair. The conditions in ``maskdn bench``'s paper-grid order, so the two halves (milder or
    structured noise, stronger noise) read as they lie."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from maskdn.generalization import PAPER_GRID

    pairs = {patches: targets.differences(*pair_records(root, runs))
             for patches, runs in sorted(benchmarked(root).items()) if all(n in runs for n in campaign.PAIR)}
    if not pairs:
        return None
    dest = dest or root / "docs" / "campaign-bench.png"
    fig, axes = plt.subplots(1, len(targets.GRIDS), figsize=(6.5 * len(targets.GRIDS), 4.2), sharey=True, squeeze=False)
    x = {c: i for i, c in enumerate(PAPER_GRID)}
    for ax, ds in zip(axes[0], targets.GRIDS):
        first = ds == targets.GRIDS[0]  # one legend for the figure, from the first panel
        ax.axvspan(x[targets.TRAINING_NOISE] - 0.5, x[targets.TRAINING_NOISE] + 0.5, color="0.85",
                   label="training noise" if first else None)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.axhline(targets.OOD_MARGIN_DB, color="0.3", linewidth=0.8, linestyle=":",
                   label=f"target 1: the mean out of distribution ≥ +{targets.OOD_MARGIN_DB:g}" if first else None)
        means = []
        for i, (patches, diff) in enumerate(pairs.items()):
            ood = [v for (d, c), v in diff.items() if d == ds and c != targets.TRAINING_NOISE]
            if ood:
                means.append(f"{sum(ood) / len(ood):+.2f} ({patches:,})")
            label = f"cool-downs at {patches:,} patches" if first else None
            for family in dict.fromkeys(c.split(":")[0] for c in PAPER_GRID):  # a line within each noise's levels
                pts = sorted((x[c], v) for (d, c), v in diff.items() if d == ds and c.split(":")[0] == family and c in x)
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=4, color=f"C{i}", label=label)
                    label = None
        ax.set_xticks(range(len(PAPER_GRID)), PAPER_GRID, rotation=90, fontsize=7)
        # two lines: on one, the means of three pairs or more overran the panel
        ax.set_title(f"{ds}: masked − baseline per condition\nmean out of distribution (at patches): "
                     f"{', '.join(means)}", fontsize=8)
        if first:
            ax.set_ylabel("PSNR difference (dB; above 0: masking ahead)")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=2 + len(pairs), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    dest.parent.mkdir(parents=True, exist_ok=True)
    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest
