"""What the campaign's validation curves predict at a length the runs have not reached yet.

Issue 17 asks, should the budget run out before 1,000,000 patches, "what the curves predict". Each
run logs its EMA weights' validation PSNR (dB) every fixed number of patches, per noise. Over the
recent part of a run the curves are close to straight against log2(patches), so each run's trend
is a least-squares line of PSNR on log2(patches), in dB per doubling of its patches, and its
prediction at ``patches`` extends that line from the run's newest point.

The curves bend (they flatten as a run converges), so one window would give one arbitrary answer:
every prediction is made from two windows, the points of the run's last doubling and those of its
last two (:data:`WINDOWS`), and is reported as the range between them. The spread says how much the
answer depends on that choice; it is not a confidence interval. The points are the stable-lr EMA
validation of the main runs, not cool-downs (a cool-down added −0.05 to +0.06 dB per noise at 125k
patches, ``campaign/cooldowns.json``), on 16 held-out CBSD432 crops, not the README's benchmark.

:func:`backtest` tries the method on each run's own past (fitted on the points up to half its newest
patches, predicted at the newest) and reports the miss: a measured error one doubling ahead, printed
under the forecast.

Once two or more milestone pairs are benchmarked, :func:`target_trends` does the same for the success
targets themselves (``campaign/targets.py`` on each pair's benchmark records): a line in log2(patches)
through the pairs, extended; ``campaign.py save`` writes it under the targets in ``docs/training.md``.

    python campaign/forecast.py [--patches N]   # default: the runs' configured length
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

WINDOWS = (2.0, 4.0)
"""Fit windows, as ratios: the points with patches ≥ newest / ratio (its last doubling, its last two)."""
MIN_POINTS = 3
TRAINING_NOISE = "gaussian:15"


def trend(points: Sequence[tuple[int, float]], window: float) -> tuple[float, float, int] | None:
    """Least-squares line of PSNR against log2(patches) over the newest points.

    Args:
        points: (patches, PSNR in dB) pairs, any order; patches > 0.
        window: Use the points with patches ≥ (the newest patches) / ``window``; ≥ 1.

    Returns:
        (slope in dB per doubling of the patches, the line's value at the newest patches in dB, points
        used), or None with fewer than :data:`MIN_POINTS` points in the window.
    """
    if not points:
        return None
    newest = max(p for p, _ in points)
    used = [(math.log2(p), v) for p, v in points if p >= newest / window]
    if len(used) < MIN_POINTS:
        return None
    return (*_fit(used, math.log2(newest)), len(used))


def _fit(xy: Sequence[tuple[float, float]], x_at: float) -> tuple[float, float]:
    """Least-squares line through ``xy`` (two distinct x at least): (slope, its value at ``x_at``)."""
    mx = sum(x for x, _ in xy) / len(xy)
    my = sum(v for _, v in xy) / len(xy)
    slope = sum((x - mx) * (v - my) for x, v in xy) / sum((x - mx) ** 2 for x, _ in xy)
    return slope, my + slope * (x_at - mx)


def predict(points: Sequence[tuple[int, float]], patches: int, window: float) -> float | None:
    """PSNR (dB) at ``patches`` along :func:`trend` from the newest point, or None (too few points)."""
    t = trend(points, window)
    if t is None:
        return None
    slope, at_newest, _ = t
    return at_newest + slope * (math.log2(patches) - math.log2(max(p for p, _ in points)))


def _series(history: Sequence[Mapping], noise: str) -> list[tuple[int, float]]:
    return [(e["patches"], e["psnr"][noise]) for e in history if noise in e["psnr"]]


def _span(values: Sequence[float | None]) -> tuple[float, float] | None:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if len(known) == len(values) and known else None


def forecast(histories: Mapping[str, Sequence[Mapping]], masked: str, baseline: str, patches: int,
             windows: Sequence[float] = WINDOWS, training_noise: str = TRAINING_NOISE) -> list[dict]:
    """Each noise's predicted PSNR of both runs at ``patches``, and of masked − baseline.

    Args:
        histories: Run name → its validation history: entries ``{"patches": int, "psnr": {noise: dB}}``
            (a training state's ``val_history``).
        masked, baseline: The two runs compared.
        patches: Where to predict (patches seen).
        windows: The fit windows (:func:`trend`); each prediction is the range over them.
        training_noise: The noise the runs train on; the others make the out-of-distribution mean.

    Returns:
        One dict per noise both runs validate on, then one for the mean of the noises other than
        ``training_noise`` (``noise`` = ``"unseen mean"``): ``{noise, newest: {run: (patches, dB)},
        slope: {run: (lo, hi) dB per doubling}, predicted: {run: (lo, hi) dB}, gap_now: (patches, dB) at
        the newest patches both runs have, gap: (lo, hi) dB}``. A value that too few points allow is
        None.
    """
    runs = (masked, baseline)
    noises = [n for n in dict.fromkeys(k for e in histories[masked] for k in e["psnr"])
              if any(n in e["psnr"] for e in histories[baseline])]
    rows = []
    per_window = {}  # (noise, run, window) → prediction
    for noise in noises:
        series = {r: _series(histories[r], noise) for r in runs}
        for r in runs:
            for w in windows:
                per_window[noise, r, w] = predict(series[r], patches, w)
        shared = sorted(set(dict(series[masked])) & set(dict(series[baseline])))
        gap_now = (shared[-1], dict(series[masked])[shared[-1]] - dict(series[baseline])[shared[-1]]) if shared else None
        slopes = {r: _span([(trend(series[r], w) or (None,))[0] for w in windows]) for r in runs}
        rows.append({"noise": noise, "newest": {r: max(series[r]) for r in runs},
                     "slope": slopes, "predicted": {r: _span([per_window[noise, r, w] for w in windows]) for r in runs},
                     "gap_now": gap_now, "gap": _span([_diff(per_window[noise, masked, w], per_window[noise, baseline, w])
                                                       for w in windows])})
    unseen = [n for n in noises if n != training_noise]
    if unseen:
        def mean(values):
            return None if any(v is None for v in values) else sum(values) / len(values)

        now = [r["gap_now"] for r in rows if r["noise"] in unseen]
        same = now and all(g and g[0] == now[0][0] for g in now)
        rows.append({"noise": "unseen mean", "newest": {}, "slope": {}, "predicted": {
            r: _span([mean([per_window[n, r, w] for n in unseen]) for w in windows]) for r in runs},
            "gap_now": (now[0][0], sum(g[1] for g in now) / len(now)) if same else None,
            "gap": _span([_diff(mean([per_window[n, masked, w] for n in unseen]),
                                mean([per_window[n, baseline, w] for n in unseen])) for w in windows])})
    return rows


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _range(span: tuple[float, float] | None, signed: bool = False) -> str:
    if span is None:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    lo, hi = (fmt.format(v) for v in span)
    return lo if lo == hi else f"{lo} to {hi}"


def markdown(rows: Sequence[Mapping], masked: str, baseline: str, patches: int) -> str:
    """``rows`` of :func:`forecast` as a Markdown table (dB)."""
    head = (f"| noise | `{masked}` newest | trend (dB/doubling) | at {patches:,} | `{baseline}` newest | "
            f"trend (dB/doubling) | at {patches:,} | {masked} − {baseline} now | at {patches:,} |")
    lines = [head, "|---" * 9 + "|"]
    for r in rows:
        cells = [r["noise"]]
        for run in (masked, baseline):
            newest = r["newest"].get(run)
            cells += ["–" if newest is None else f"{newest[1]:.2f} ({newest[0]:,})",
                      _range(r["slope"].get(run), signed=True), _range(r["predicted"].get(run))]
        now = r["gap_now"]
        cells += ["–" if now is None else f"{now[1]:+.2f} ({now[0]:,})", _range(r["gap"], signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BACKTEST_INTRO = ("The same fits made one doubling ago (from each run's points up to half its newest patches), "
                  "against its newest points: predicted − measured, dB (`forecast.backtest`):")
"""The sentence that introduces :func:`backtest_markdown`'s table, here and in ``campaign/README.md``."""


def backtest(histories: Mapping[str, Sequence[Mapping]], windows: Sequence[float] = WINDOWS) -> list[dict]:
    """The forecast tried on the runs' own past: how far it missed over one doubling.

    For each run, the points up to half its newest patches stand in for "now" (so "one doubling" is at
    least one: from the last validation point at or below the half); :func:`predict` from them
    (each window) at the newest patches, minus the newest point's measured PSNR, is the error the
    method would have made. It says how far to trust a prediction one doubling ahead; the forecast to
    the runs' length reaches further, and early points (where the curves still bend fast) make the
    longer windows' fits the worse ones.

    Args:
        histories: Run name → its validation history (entries ``{"patches": int, "psnr": {noise: dB}}``).
        windows: The fit windows (:func:`trend`).

    Returns:
        One dict per noise any run validates on: ``{noise, runs: {run:
        {"from": patches of the last point used, "at": newest patches, "error": (lo, hi) dB predicted −
        measured over the windows, or None where too few points allow}}}``.
    """
    noises = list(dict.fromkeys(k for h in histories.values() for e in h for k in e["psnr"]))
    rows = []
    for noise in noises:
        runs = {}
        for run, h in histories.items():
            series = _series(h, noise)
            if not series:
                continue
            at, measured = max(series)
            past = [(p, v) for p, v in series if p <= at / 2]
            runs[run] = {"from": max(past)[0] if past else None, "at": at,
                         "error": _span([None if (v := predict(past, at, w)) is None else v - measured for w in windows])}
        rows.append({"noise": noise, "runs": runs})
    return rows


def backtest_markdown(rows: Sequence[Mapping], runs: Sequence[str]) -> str:
    """``rows`` of :func:`backtest` as a Markdown table (dB): one column per run, its range over the windows."""
    def head(run: str) -> str:
        known = [r["runs"][run] for r in rows if run in r["runs"] and r["runs"][run]["from"]]
        return f"`{run}` ({known[0]['from']:,} → {known[0]['at']:,})" if known else f"`{run}`"

    lines = ["| noise | " + " | ".join(head(r) for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['noise']} | " + " | ".join(_range(r["runs"].get(run, {}).get("error"), signed=True)
                                                      for run in runs) + " |")
    return "\n".join(lines)


def target_trends(measured: Mapping[int, Sequence[Mapping]], patches: int) -> list[dict]:
    """Each success target's line through the benchmarked pairs, extended to ``patches``.

    The benchmark is what the targets are defined on, so once two or more pairs are benchmarked this is
    the forecast that counts; a least-squares line in log2(patches) through all of them (through both,
    with two).

    Args:
        measured: Patches → the rows :func:`targets.targets` gave for the pair benchmarked there
            (``{target, dataset, measured (dB or None), threshold, [images], ...}``). Where rows say
            how many images they average (``images``), a target's line goes only through the points
            on as many images as its newest: a mean over other images is another quantity.
        patches: Where to predict.

    Returns:
        One dict per (target, dataset) measured at two or more patch counts, in the rows' order:
        ``{target, dataset, threshold, points: [(patches, dB)], slope (dB per doubling), predicted (dB),
        met (predicted ≥ threshold)}``.
    """
    out: dict[tuple[str, str], dict] = {}
    for at, rows in sorted(measured.items()):
        for r in rows:
            if r["measured"] is not None:
                out.setdefault((r["target"], r["dataset"]), {"target": r["target"], "dataset": r["dataset"],
                                                             "threshold": r["threshold"], "points": []})["points"].append(
                    (at, r["measured"], r.get("images")))
    trends = []
    for entry in out.values():
        newest = entry["points"][-1][2]
        pts = entry["points"] = [(p, v) for p, v, n in entry["points"] if n == newest]
        if len({p for p, _ in pts}) < 2:
            continue
        slope, at_newest = _fit([(math.log2(p), v) for p, v in pts], math.log2(max(p for p, _ in pts)))
        predicted = at_newest + slope * (math.log2(patches) - math.log2(max(p for p, _ in pts)))
        trends.append(entry | {"slope": slope, "predicted": predicted, "met": predicted >= entry["threshold"] - 1e-9})
    return trends


def target_markdown(trends: Sequence[Mapping], patches: int) -> str:
    """:func:`target_trends` as a Markdown table (dB)."""
    lines = [f"| target | dataset | measured (dB, at patches) | trend (dB/doubling) | at {patches:,} | needed | met at {patches:,} |",
             "|---|---|---|---|---|---|---|"]
    for t in trends:
        seen = ", ".join(f"{v:+.2f} ({p:,})" for p, v in t["points"])
        lines.append(f"| {t['target']} | {t['dataset']} | {seen} | {t['slope']:+.2f} | {t['predicted']:+.2f} | "
                     f"≥ {t['threshold']:+.2f} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="forecast.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--patches", type=int, default=None,
                   help="where to predict (default: the runs' configured length, 1,000,000 patches)")
    a = p.parse_args(argv)
    if a.patches is not None and a.patches <= 0:
        p.error(f"--patches must be positive, not {a.patches}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import campaign
    import writeup

    def work() -> list[str]:
        patches = a.patches or writeup.forecast_patches(campaign.ROOT)
        hist = {n: campaign.history(campaign.ROOT, n)[1] for n in campaign.PAIR}
        return [markdown(forecast(hist, *campaign.PAIR, patches), *campaign.PAIR, patches), "", BACKTEST_INTRO, "",
                backtest_markdown(backtest(hist), campaign.PAIR)]

    return campaign.report("forecast.py", work)


if __name__ == "__main__":
    sys.exit(main())
