"""The training campaign: open-ended runs carried across sessions and machines through git.

Each folder ``campaign/NAME/`` holds one run's ``config.toml`` (a maskdn ``TrainConfig``, ``schedule =
"wsd"``) and its latest ``state.pt`` (model, EMA, optimizer, iteration, RNG states, validation
history: everything a resumed run needs; 1.6 MiB for the small preset, and ``save`` refuses one over 6 MiB),
and while a milestone's cool-down is under way its branch's newest state, ``cooldown.pt``. The run itself trains in the git-ignored folder
named by the config's ``out`` (``runs/campaign/NAME``), in the background, the cores shared among the
runs with work left (one thread each while both train; :func:`threads_per_run`).

    python campaign/campaign.py start      # resume every run (``run NAME`` in the background) from its newest state
    python campaign/campaign.py status     # iteration, patches, speed and latest validation of each run
    python campaign/campaign.py save       # copy the newest states and benchmark records into campaign/, redraw tables + figures
    python campaign/campaign.py stop       # SIGTERM (each run saves at its next step), then save
    python campaign/campaign.py cooldown NAME [--iterations N]   # cool-down branch + export of NAME now
    python campaign/campaign.py extend NAME --iterations N        # raise a run's target length
    python campaign/campaign.py run NAME   # what ``start`` runs: train to each milestone, cool down, benchmark, go on

Milestones: the run's patches double from one to the next, ending at its configured length (for
62,500 iterations of 16 patches: iterations 7,813, 15,625, 31,250 and 62,500, i.e. 125k, 250k, 500k
and 1M patches). ``run`` trains exactly to the next one (a wsd run's length may change on resume
without changing what it computes), branches a cool-down there (5% more iterations, lr decayed to 0),
benchmarks its export on the README's grid and PolyU and on the paper's Kodak24 conditions (:data:`BENCH_PLAN`;
``maskdn bench``, one single-threaded process per thread of the run; its records are
kept in ``campaign/bench/`` and resume on any machine) and trains on. Where both ``masked`` and
``baseline`` have a benchmarked cool-down at the same patches, ``docs/training.md`` gets the issue's
success targets measured on them (``campaign/targets.py``).

``campaign/writeup.py`` draws the runs' states and records into the tables and figures people read
(``campaign/README.md``, ``docs/training.md``'s targets, ``docs/campaign.png``, ``docs/campaign-bench.png``);
``campaign/forecast.py`` extends each run's validation curves to the runs' length (what they predict; its
table is written under the runs' table in ``campaign/README.md``, its bands into the figure).
``campaign/ship.py PATCHES`` ships a benchmarked pair into the model zoo and the README.
``campaign/resume.sh`` runs ``start``, ``campaign/stop.sh`` runs ``stop``. Relative paths in the configs
are relative to the repository root, where every command runs. While the runs' processes work they
rewrite tracked files (``campaign/README.md``, ``cooldowns.json``, ``cooldowns/``, ``bench/``,
``docs/campaign.png``, ``docs/campaign-bench.png``, ``docs/training.md``'s targets) under a lock: commit them with the states.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
MAX_STATE_BYTES = 6 * 2**20  # what a committed state may weigh
PAIR = ("masked", "baseline")
"""The runs the success targets compare (``campaign/targets.py``): the masked model and its baseline."""
DOUBLINGS = 4
"""How many milestones a run has: its length and the halvings before it (see the module docstring)."""


class Part(NamedTuple):
    """One part of every cool-down's benchmark (``maskdn bench``, one pass, ``noisy`` beside the model)."""

    name: str
    """Its key in ``cooldowns.json``'s ``bench`` and in ``campaign/bench/METHOD-NAME.json.gz``."""
    datasets: tuple[str, ...]
    """Dataset folders beside the run's training data."""
    limit: int | None
    """Images per dataset, the first ones by name; None: all."""
    conditions: Callable[[], list[str]] | None = None
    """The noise conditions (called when the part runs); None: the benchmark's noises (the paper grid)."""
    readme: bool = True
    """Whether its records are the README's benchmark (``docs/bench/results-NAME.json.gz``), which a
    shipped pair joins (``campaign/ship.py``); False: a measurement for the success targets only."""


def paper_conditions() -> list[str]:
    """The 14 Kodak24 conditions the masked-training paper plots (``benchmarks/reported.py``)."""
    return list(_sibling("targets").paper_masked())


README_PARTS = (Part("grid", ("Kodak24", "CBSD68"), 16), Part("polyu", ("PolyU",), None))
"""The README's benchmark: the paper grid on the first 16 images of Kodak24 and CBSD68, and PolyU."""
PAPER_PART = Part("paper", ("Kodak24",), None, paper_conditions, readme=False)
"""All 24 Kodak24 images under the paper's 14 plotted conditions, so that success target 3 compares a
mean over the same images as the paper's (the grid's first 16 are reused, not recomputed)."""
BENCH_PLAN = README_PARTS + (PAPER_PART,)
"""Each cool-down's benchmark, part by part."""


# ---- where things are ------------------------------------------------------------------------------


def campaign_dir(root: Path) -> Path:
    return root / "campaign"


GPU_PREFIX = "gpu-"
"""Folders of runs trained on a GPU machine by ``benchmarks/gpu_run.py`` (docs/gpu.md), not by this script."""


def run_names(root: Path) -> list[str]:
    """Every campaign run: the folders of ``campaign/`` with a ``config.toml``, but the GPU runs."""
    return sorted(p.parent.name for p in campaign_dir(root).glob("*/config.toml")
                  if not p.parent.name.startswith(GPU_PREFIX))


def config_path(root: Path, name: str) -> Path:
    return campaign_dir(root) / name / "config.toml"


def load(root: Path, name: str):
    from maskdn.train import load_config

    return load_config(config_path(root, name))


def run_dir(root: Path, name: str) -> Path:
    out = Path(load(root, name).out)
    return out if out.is_absolute() else root / out


def committed_state(root: Path, name: str) -> Path:
    return campaign_dir(root) / name / "state.pt"


def committed_cooldown(root: Path, name: str) -> Path:
    """Where the run's cool-down in progress is committed: its branch's newest state (no file between milestones)."""
    return campaign_dir(root) / name / "cooldown.pt"


def branch_dir(root: Path, name: str, iteration: int) -> Path:
    """The git-ignored folder of the run's cool-down branched at ``iteration``."""
    return run_dir(root, name).with_name(f"{name}-cd-{iteration}")


def pid_file(root: Path, name: str) -> Path:
    return run_dir(root, name).with_suffix(".pid")


def log_file(root: Path, name: str) -> Path:
    return run_dir(root, name).with_suffix(".log")


def iteration_of(path: Path) -> int:
    """The iteration of a state file, -1 if there is none."""
    from maskdn.train.checkpoint import load_state

    return load_state(path)["iteration"] if path.is_file() else -1


def branch_of(path: Path | None) -> tuple[int, int, int] | None:
    """A cool-down branch's state file, read once: (the iteration it branched at, its length, its iteration
    now); None if there is no file."""
    from maskdn.train.checkpoint import load_state

    if path is None or not path.is_file():
        return None
    state = load_state(path)
    cfg = state["config"]
    return cfg["iterations"] - cfg["cooldown"], cfg["cooldown"], state["iteration"]


def open_branch(root: Path, name: str) -> Path | None:
    """The state file of the run's cool-down in progress on this machine (a branch folder whose branch
    point ``cooldowns.json`` has not recorded yet), or None."""
    done = cooled_down(root, name)
    found = []
    for path in run_dir(root, name).parent.glob(f"{name}-cd-*/state.pt"):
        point = path.parent.name[len(name) + 4:]
        if point.isdigit() and int(point) not in done:
            found.append((int(point), path))
    return max(found)[1] if found else None


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_STATE_BYTES:
        raise SystemExit(f"campaign: {path} is {size / 2**20:.1f} MiB, over the {MAX_STATE_BYTES / 2**20:.0f} MiB "
                         "a committed state may weigh")


def _cmdline(pid: int) -> str:
    """A process's command line, its arguments separated (and ended) by NUL; raises OSError when it is gone."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode()


def running_pid(root: Path, name: str) -> int | None:
    """The pid of the run's background process, if it is alive."""
    path = pid_file(root, name)
    if not path.is_file():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)  # alive (or a zombie, checked next)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = _cmdline(pid).replace("\0", " ")
    except (ValueError, OSError):
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    # empty while the process is between fork and exec; otherwise a reused pid shows another command
    # (``maskdn train``: what ``start`` ran before runs had milestones; such a process is stopped alike)
    ours = ("campaign.py" in cmdline and " run " in cmdline) or ("maskdn" in cmdline and " train " in cmdline)
    return pid if not cmdline or ours else None


def _copy_atomic(src: Path, dest: Path) -> None:
    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        shutil.copyfile(src, tmp)


def _write_atomic(dest: Path, text: str) -> None:
    from maskdn.io import atomic_write

    with atomic_write(dest) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def _locked(root: Path):
    """Hold the campaign's lock: the runs' processes share ``cooldowns.json`` and the generated files."""
    import fcntl

    path = root / "runs" / "campaign" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _local_state(root: Path, name: str) -> int:
    """Make the run folder hold the newer of the committed and the local state; its iteration (-1: none)."""
    out, committed = run_dir(root, name), committed_state(root, name)
    out.mkdir(parents=True, exist_ok=True)
    local = out / "state.pt"
    if iteration_of(committed) > iteration_of(local):
        _copy_atomic(committed, local)
    return iteration_of(local)


def phase_file(root: Path, name: str) -> Path:
    """What the run's process is doing (its last line), beside its log."""
    return run_dir(root, name).with_suffix(".phase")


def stop_file(root: Path, name: str) -> Path:
    """Present while a stop of the run is asked for: :func:`stop` creates it, :func:`start` removes it."""
    return run_dir(root, name).with_suffix(".stop")


# ---- commands --------------------------------------------------------------------------------------


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pending_parts(record: dict, plan=BENCH_PLAN) -> list[str]:
    """The parts of :data:`BENCH_PLAN` not yet benchmarked for a cool-down (an entry of ``cooldowns.json``)."""
    return [part.name for part in plan if not record.get("bench", {}).get(part.name)]


def finished(root: Path, name: str, doublings: int = DOUBLINGS, plan=BENCH_PLAN) -> bool:
    """Whether :func:`run` has nothing left to do for the run on this machine: it has reached its length,
    its last milestone is cooled down, and every cool-down is benchmarked on the parts whose datasets
    this machine has."""
    cfg = load(root, name)
    it = _local_state(root, name)
    records = [r for r in read_cooldowns(root) if r["run"] == name]
    if it < cfg.iterations or (it in milestones(cfg.iterations, doublings) and it not in {r["iteration"] for r in records}):
        return False
    data_root = Path(cfg.data).parent
    here = {part.name for part in plan if all((data_root / d).is_dir() for d in part.datasets)}
    return not any(here.intersection(pending_parts(r, plan)) for r in records)


def threads_per_run(root: Path, doublings: int = DOUBLINGS) -> int:
    """The cores shared out among the runs with work left (:func:`finished`), at least one each: once
    one run is done, the others take its core at their next start."""
    left = sum(not finished(root, name, doublings) for name in run_names(root))
    return max(1, cores() // max(1, left))


def start(root: Path = ROOT, names: list[str] | None = None, doublings: int = DOUBLINGS,
          threads: int | None = None) -> list[str]:
    """Start each run's :func:`run` in the background from the newer of its committed and its local state.

    ``threads``: each process's threads (training, cool-down, benchmark jobs); None: :func:`threads_per_run`.
    """
    lines = []
    threads = threads or threads_per_run(root, doublings)
    for name in names or run_names(root):
        pid = running_pid(root, name)
        if pid:
            lines.append(f"{name}: already running (pid {pid})")
            continue
        it = _local_state(root, name)
        stop_file(root, name).unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", name, "--root", str(root), "--doublings",
               str(doublings), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        with open(log_file(root, name), "ab") as log:
            proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        pid_file(root, name).write_text(f"{proc.pid}\n")
        lines.append(f"{name}: started at iteration {max(0, it)} ({threads} thread{'s' * (threads > 1)}, pid {proc.pid}, "
                     f"log {log_file(root, name)})")
    return lines


def stop(root: Path = ROOT, names: list[str] | None = None, timeout: float = 900.0) -> list[str]:
    """SIGTERM each running run (it saves its state at the next iteration boundary), wait, then :func:`save`."""
    names = names or run_names(root)
    pids = {n: p for n in names if (p := running_pid(root, n))}
    for n, pid in pids.items():
        stop_file(root, n).touch()  # seen between phases, also if a phase ends as the signal comes
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(running_pid(root, n) for n in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    lines = [f"{n}: still running after {timeout:.0f} s (pid {p})" if running_pid(root, n) else f"{n}: stopped"
             for n, p in pids.items()]
    return lines + save(root, names)


def save(root: Path = ROOT, names: list[str] | None = None) -> list[str]:
    """Copy each run's newest local state into ``campaign/NAME/state.pt`` (and a cool-down's in progress into
    ``cooldown.pt``) and the benchmark records into ``campaign/bench/``; redraw the tables and figures."""
    lines = []
    for name in names or run_names(root):
        local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
        it_local, it_committed = iteration_of(local), iteration_of(committed)
        lines += _save_branch(root, name)
        if it_local <= it_committed:
            lines.append(f"{name}: campaign state is current (iteration {max(it_committed, 0)})")
            continue
        _check_size(local)
        _copy_atomic(local, committed)
        lines.append(f"{name}: saved iteration {it_local} ({local.stat().st_size / 2**20:.1f} MiB)")
    with _locked(root):
        for results in sorted((root / "runs" / "campaign" / "bench").glob("*/results.json")):
            keep = campaign_dir(root) / "bench" / f"{results.parent.name}.json.gz"
            n, grew = _keep_records(results, keep)
            if grew:
                lines.append(f"{results.parent.name}: kept {n} benchmark records")
        _writeup().redraw(root)
    return lines


def _save_branch(root: Path, name: str) -> list[str]:
    """Copy the run's cool-down in progress (:func:`open_branch`) into ``campaign/NAME/cooldown.pt`` when it
    is newer than the one there, so that another machine goes on with it rather than from its start;
    remove the one there once ``cooldowns.json`` records its cool-down."""
    local, committed = open_branch(root, name), committed_cooldown(root, name)
    ours, kept = branch_of(local), branch_of(committed)
    if kept and kept[0] in cooled_down(root, name):
        committed.unlink()
        return [f"{name}: its cool-down from iteration {kept[0]} is recorded; removed {committed.relative_to(root)}"]
    if ours is None or (kept and ours[:2] == kept[:2] and ours[2] <= kept[2]):
        return []
    _check_size(local)
    _copy_atomic(local, committed)
    point, n, it = ours
    return [f"{name}: saved its cool-down from iteration {point} at iteration {it} of {point + n}"]


def check_run(root: Path, name: str) -> None:
    """Raise ``MaskdnError("no campaign run NAME (runs: ...)")`` unless ``campaign/NAME/config.toml`` exists."""
    from maskdn.errors import MaskdnError

    if not config_path(root, name).is_file():
        raise MaskdnError(f"no campaign run {name!r} (runs: {', '.join(run_names(root)) or 'none'})")


def extend(root: Path, name: str, iterations: int) -> str:
    """Set the run's target length (wsd runs may change it on resume; takes effect at its next start).

    The milestones follow the new length (halvings of it): extend ``masked`` and ``baseline`` alike, or
    their cool-downs stop falling at the same patches.

    Raises:
        MaskdnError: no such run, or ``iterations`` not above the run's newest state's iteration.
    """
    from maskdn.errors import MaskdnError

    check_run(root, name)
    local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
    now = max(iteration_of(local), iteration_of(committed), 0)
    if not isinstance(iterations, int) or iterations <= now:
        raise MaskdnError(f"{config_path(root, name)}: iterations must be above the run's {now:,} done, not {iterations}")
    path = config_path(root, name)
    lines = path.read_text().splitlines()
    lines = [f"iterations = {iterations}" if line.startswith("iterations =") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    load(root, name)  # a bad value fails here, naming the file
    return f"{name}: iterations = {iterations} (restart the run for it to take effect)"


def cooldown(root: Path, name: str, iterations: int | None = None, fraction: float = 0.05, threads: int = 1) -> str:
    """Branch a cool-down off the run's newest state, train it here, and keep its export.

    Length: ``iterations``, or ``fraction`` of the run's iterations so far (at least 100). The export is
    copied to ``campaign/cooldowns/NAME-<patches>.safetensors`` and its validation scores recorded in
    ``campaign/cooldowns.json``. A branch stopped part-way resumes from its folder
    (:func:`branch_dir`) or, when newer, from ``campaign/NAME/cooldown.pt`` (what :func:`save` committed
    of it on another machine; used only for the same branch point and length).
    """
    from maskdn.train import cooldown as branch
    from maskdn.train.checkpoint import load_state

    local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
    source = local if iteration_of(local) >= iteration_of(committed) else committed
    state = load_state(source)
    it = state["iteration"]
    n = iterations or cooldown_length(it, fraction)
    dest = branch_dir(root, name, it)
    part_way = committed_cooldown(root, name)  # the same cool-down, stopped part-way on another machine
    kept = branch_of(part_way)
    if kept and kept[:2] == (it, n) and kept[2] > iteration_of(dest / "state.pt"):
        dest.mkdir(parents=True, exist_ok=True)
        _copy_atomic(part_way, dest / "state.pt")
    cfg = load(root, name)  # this machine's settings, not those of the machine that saved the state (a GPU's)
    weights = branch(source, n, dest, threads=threads, device=cfg.device, workers=cfg.workers)
    keep = keep_cooldown(root, name, it, load_state(dest / "state.pt"), weights)
    return f"{name}: cool-down of {n} iterations from iteration {it} → {keep.relative_to(root)}"


def cooldown_length(iteration: int, fraction: float = 0.05) -> int:
    """A cool-down's iterations for a run at ``iteration``: ``fraction`` of it, at least 100."""
    return max(100, round(fraction * iteration))


def keep_cooldown(root: Path, name: str, iteration: int, final: dict, weights: Path) -> Path:
    """Record the cool-down of run ``name`` branched at ``iteration``: its export ``weights`` copied to
    ``campaign/cooldowns/NAME-PATCHES.safetensors``, its entry (length, validation scores of its final
    state ``final``) in ``cooldowns.json``, the tables and figure redrawn; where the export went.
    (The GPU session's cool-downs come in here too, through ``benchmarks/gpu_run.py --apply``.)"""
    batch = final["config"]["batch_size"]
    patches = iteration * batch
    keep = campaign_dir(root) / "cooldowns" / f"{name}-{patches}.safetensors"
    keep.parent.mkdir(exist_ok=True)
    _copy_atomic(weights, keep)
    record = {"run": name, "iteration": iteration, "patches": patches, "cooldown": final["iteration"] - iteration,
              "patches_with_cooldown": final["iteration"] * batch,
              "val_psnr": final["val_history"][-1]["psnr"] if final["val_history"] else {},
              "weights": str(keep.relative_to(root))}
    with _locked(root):
        records = [r for r in read_cooldowns(root) if (r["run"], r["iteration"]) != (name, iteration)] + [record]
        _write_cooldowns(root, records)
        _writeup().redraw(root)
    return keep


# ---- the background process: milestones, cool-downs, benchmarks -------------------------------------


def milestones(iterations: int, doublings: int = DOUBLINGS) -> list[int]:
    """The iterations where a run of ``iterations`` has doubled its patches: ⌈iterations / 2^k⌉, k < ``doublings``."""
    return sorted({-(-iterations // 2**k) for k in range(doublings)} - {0})


def _write_cooldowns(root: Path, records: list[dict]) -> None:
    _write_atomic(campaign_dir(root) / "cooldowns.json", json.dumps(records, indent=1) + "\n")


def bench_keep(root: Path, method: str, part: str) -> Path:
    """Where the records of a cool-down's benchmark part are committed (gzipped ``results.json``)."""
    return campaign_dir(root) / "bench" / f"{method}-{part}.json.gz"


def bench_dir(root: Path, method: str, part: str) -> Path:
    """The git-ignored ``maskdn bench`` output folder of a cool-down's benchmark part."""
    return root / "runs" / "campaign" / "bench" / f"{method}-{part}"


def _load_results(path: Path) -> list[dict]:
    from maskdn.generalization import load_results

    return load_results(path)


def _keep_records(src: Path, keep: Path) -> tuple[int, bool]:
    """Copy the records of ``src`` (a results.json) gzipped to ``keep`` when it has more: (the count
    ``keep`` now holds, whether it grew)."""
    records, kept = _load_results(src), _load_results(keep)
    if len(records) <= len(kept):
        return len(kept), False
    keep.parent.mkdir(parents=True, exist_ok=True)
    write_records(keep, records)
    return len(records), True


def write_records(path: Path, records: list[dict]) -> bool:
    """``records`` gzipped to ``path``, atomically and reproducibly (no name or time in the gzip header,
    so the same records give the same bytes in git); False (nothing written) when ``path`` already
    holds exactly these bytes."""
    from maskdn.io import atomic_write

    data = gzip.compress(json.dumps(records, indent=0).encode("utf-8"), mtime=0)
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return True


def bench(root: Path, record: dict, plan=BENCH_PLAN, noises: list[str] | None = None, check_stop=lambda: None,
          jobs: int = 1) -> list[str]:
    """Benchmark the cool-down export of ``record`` (an entry of ``cooldowns.json``) part by part.

    Each part (:class:`Part`, :data:`BENCH_PLAN`) runs ``maskdn bench``'s evaluator on the export and
    ``noisy`` (one pass, ``jobs`` processes of one thread, no LPIPS) under its conditions (``noises``, or
    the paper grid, where it names none), resuming from the local output folder or, on another machine,
    from the records committed in ``campaign/bench/``; records the cool-down's finished parts already
    hold are taken, not recomputed. Finished, a part's records are kept there and the part is marked
    done in ``cooldowns.json``. Datasets are the folders beside the run's training data.
    """
    import torch
    from maskdn.generalization import PAPER_GRID, method_name, run_bench

    torch.set_num_threads(1)
    weights = root / record["weights"]
    method = method_name(weights)
    data_root = Path(load(root, record["run"]).data).parent
    lines = []
    for part in plan:
        if record.get("bench", {}).get(part.name):
            continue
        missing = [str(data_root / d) for d in part.datasets if not (data_root / d).is_dir()]
        if missing:
            lines.append(f"{record['run']}: {method}'s {part.name} benchmark waits for a machine with {', '.join(missing)}")
            continue
        check_stop()
        out, keep = bench_dir(root, method, part.name), bench_keep(root, method, part.name)
        out.mkdir(parents=True, exist_ok=True)
        _set_phase(root, record["run"], f"benchmark of {method}: {part.name}")
        # the records committed so far (another machine's, maybe) and the other parts' are taken, not recomputed
        reuse = [r for f in [keep, *(root / f for f in record.get("bench", {}).values())] for r in _load_results(f)]
        conditions = part.conditions() if part.conditions else noises or PAPER_GRID
        run_bench([data_root / d for d in part.datasets], [str(weights), "noisy"], conditions, out, passes=1,
                  limit=part.limit, progress=f"{method} {part.name}", jobs=jobs, reports=False, lpips=False,
                  reuse=reuse)
        with _locked(root):
            n, _ = _keep_records(out / "results.json", keep)
            records = read_cooldowns(root)
            for r in records:
                if (r["run"], r["iteration"]) == (record["run"], record["iteration"]):
                    r.setdefault("bench", {})[part.name] = str(keep.relative_to(root))
                    record.update(r)
            _write_cooldowns(root, records)
        lines.append(f"{record['run']}: {method} benchmarked on {part.name} ({n} records → {keep.relative_to(root)})")
    with _locked(root):
        _writeup().redraw(root)
    return lines


def _set_phase(root: Path, name: str, text: str) -> None:
    _write_atomic(phase_file(root, name), text + "\n")


class _Interrupted(BaseException):
    """SIGTERM outside training (a BaseException, so that no ``except Exception`` on the way swallows it)."""


def run(root: Path, name: str, doublings: int = DOUBLINGS, plan=BENCH_PLAN, noises: list[str] | None = None,
        cooldown_iterations: int | None = None, threads: int = 1) -> str:
    """The background process of a campaign run: train to each milestone, cool down, benchmark, go on.

    Every step resumes: a stopped run (SIGTERM or SIGINT; training saves its state first) picks up
    where it was, on this machine or, from ``campaign/``, on another.

    Args:
        root: The repository.
        name: The run (``campaign/NAME/config.toml``).
        doublings: Milestones per run (:func:`milestones`); 0: none, the run just trains to its length.
        plan: The benchmark of each cool-down (:data:`BENCH_PLAN`).
        noises: The benchmark's noises (None: ``maskdn bench``'s paper grid).
        cooldown_iterations: Cool-down length (None: 5% of the run so far, at least 100 iterations).
        threads: Training and cool-down threads, benchmark processes (:func:`threads_per_run`).

    Returns:
        ``"NAME: finished at iteration N"`` once the run has reached its configured length and every
        cool-down whose datasets this machine has is benchmarked; ``"NAME: stopped"`` on a signal.
    """
    from maskdn.train import TrainingStopped, load_config, train

    def interrupt(signum, frame):
        raise _Interrupted(signal.Signals(signum).name)

    def check_stop() -> None:  # a stop asked for while a phase was ending (training then returns normally)
        if stop_file(root, name).exists():
            raise _Interrupted("stop asked for")

    cfg = load(root, name)
    marks = milestones(cfg.iterations, doublings)
    previous = signal.signal(signal.SIGTERM, interrupt)  # training installs its own while it trains
    try:
        while True:
            check_stop()
            it = _local_state(root, name)
            done = cooled_down(root, name)
            missed = [m for m in marks if m < it and m not in done]
            if missed:
                print(f"{name}: warning: no cool-down at milestone(s) {', '.join(map(str, missed))}: the run was past "
                      "them when this process started (a cool-down branches only at a milestone's exact state)", flush=True)
            if it in marks and it not in done:
                _set_phase(root, name, f"cool-down at iteration {it}")
                print(cooldown(root, name, cooldown_iterations, threads=threads), flush=True)
                check_stop()
            for record in read_cooldowns(root):
                if record["run"] == name and pending_parts(record, plan):
                    print("\n".join(bench(root, record, plan, noises, check_stop, jobs=threads)), flush=True)
            ahead = sorted(m for m in {*marks, cfg.iterations} if m > it)
            if not ahead:
                _set_phase(root, name, f"finished at iteration {it}")
                return f"{name}: finished at iteration {it}"
            check_stop()
            _set_phase(root, name, f"training to iteration {ahead[0]}")
            train(load_config(config_path(root, name), {"out": str(run_dir(root, name)), "iterations": ahead[0],
                                                         "threads": threads}))
    except (TrainingStopped, _Interrupted, KeyboardInterrupt):
        _set_phase(root, name, "stopped")
        return f"{name}: stopped"
    finally:
        signal.signal(signal.SIGTERM, previous)


def cooled_down(root: Path, name: str) -> set[int]:
    """The iterations where ``cooldowns.json`` records a cool-down of the run."""
    return {r["iteration"] for r in read_cooldowns(root) if r["run"] == name}


def read_cooldowns(root: Path) -> list[dict]:
    path = campaign_dir(root) / "cooldowns.json"
    return json.loads(path.read_text()) if path.is_file() else []


def history(root: Path, name: str) -> tuple[dict, list[dict]]:
    """(state summary, validation history) of the run's newest state, local or committed."""
    from maskdn.train.checkpoint import load_state

    local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
    source = local if iteration_of(local) >= iteration_of(committed) else committed
    if not source.is_file():
        return {}, []
    state = load_state(source)
    summary = {k: state[k] for k in ("iteration", "elapsed")} | {"batch_size": state["config"]["batch_size"],
                                                                 "device_time": state.get("device_time") or {}}
    return summary, state.get("val_history", [])


def training_time(summary: dict) -> str:
    """A run's training time in hours, split by kind of device once it has trained on more than one
    (a GPU session's seconds are not a CPU's: the state's ``device_time``)."""
    total = summary.get("elapsed", 0) / 3600
    parts = {k: v for k, v in (summary.get("device_time") or {}).items() if v >= 60}  # not a mere resume-and-save
    if len(parts) < 2:
        return f"{total:.1f} h"
    return f"{total:.1f} h (" + ", ".join(
        f"{k.upper()} " + (f"{v / 3600:.1f} h" if v >= 3600 else f"{v / 60:.0f} min") for k, v in sorted(parts.items())) + ")"


def recent_rate(root: Path, name: str, window_s: float = 1800.0) -> float | None:
    """Patches per second of training over the last ``window_s`` seconds the run's ``log.csv`` covers."""
    import csv

    log = run_dir(root, name) / "log.csv"
    if not log.is_file():
        return None
    with open(log, newline="") as f:
        rows = [(float(r["elapsed_s"]), int(r["patches"])) for r in csv.DictReader(f) if r.get("elapsed_s")]
    if len(rows) < 2:
        return None
    last = rows[-1]
    first = next(r for r in rows if r[0] >= last[0] - window_s)
    if first == last:
        first = rows[-2]
    return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else None


def status(root: Path = ROOT) -> list[str]:
    lines = []
    for name in run_names(root):
        summary, hist = history(root, name)
        pid = running_pid(root, name)
        phase = phase_file(root, name).read_text().strip() if phase_file(root, name).is_file() else ""
        if pid:
            state = f"running ({phase})" if phase else "running"
        elif phase and not phase.startswith(("stopped", "finished")):
            state = f"not running, but its last phase was '{phase}': it died; see {log_file(root, name)}"
        else:
            state = "stopped"
        if not summary:
            lines.append(f"{name}: {state}, no state yet")
            continue
        it, bs, el = summary["iteration"], summary["batch_size"], summary["elapsed"]
        rate = it * bs / el if el else 0.0
        val = ", ".join(f"{k} {v:.2f}" for k, v in hist[-1]["psnr"].items()) if hist else "no validation yet"
        ahead = [m for m in milestones(load(root, name).iterations) if m > it]
        recent = recent_rate(root, name)
        eta = (f"; next milestone {ahead[0]:,} in {(ahead[0] - it) * bs / recent / 3600:.1f} h of training at the last "
               f"half hour's {recent:.1f} patches/s, then its cool-down of {cooldown_length(ahead[0]):,} iterations and "
               "its benchmark" if ahead and recent else "")
        lines.append(f"{name}: {state}, iteration {it}, {it * bs:,} patches, {training_time(summary)} of training "
                     f"({rate:.1f} patches/s on average{eta}), validation: {val}")
        done = cooled_down(root, name)
        branches = [(info, where) for info, where in ((branch_of(committed_cooldown(root, name)), "committed"),
                                                      (branch_of(open_branch(root, name)), "here, not yet saved into campaign/"))
                    if info and info[0] not in done]
        if branches:  # the newer; the committed one where both are as far
            (point, n, at), where = max(branches, key=lambda b: b[0][2])
            lines.append(f"{name}: its cool-down from iteration {point:,} is at {at:,} of {point + n:,} ({where})")
    share = threads_per_run(root)
    for name in run_names(root):
        has = running_threads(root, name)
        if has and has < share:
            lines.append(f"{name} runs on {has} thread{'s' * (has > 1)} of the {share} it may take now that a run has "
                         f"finished: `campaign/stop.sh {name} && campaign/resume.sh` hands them over")
    return lines


def running_threads(root: Path, name: str) -> int | None:
    """The threads the run's background process started with (its ``--threads``), if it is running."""
    pid = running_pid(root, name)
    if not pid:
        return None
    try:
        args = _cmdline(pid).split("\0")
    except OSError:
        return None
    return int(args[args.index("--threads") + 1]) if "--threads" in args[:-1] else 1


def _sibling(module: str):
    """``campaign/MODULE.py``, imported (this folder is not a package); ``campaign`` itself is this module,
    whether it runs as a script or was imported, so that a sibling's ``import campaign`` shares it."""
    import importlib

    sys.modules.setdefault("campaign", sys.modules[__name__])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.pop(0)


def _writeup():
    """``campaign/writeup.py``: the tables and figures drawn from the runs' states and records."""
    return _sibling("writeup")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="campaign.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    helps = {"start": "start each run's process in the background from its newest state (resume.sh)",
             "stop": "stop each run (it saves first), then save (stop.sh)",
             "save": "copy the newest states and benchmark records into campaign/; redraw the tables and figures",
             "status": "what each run is doing, its patches, speed, next milestone and latest validation"}
    for cmd, text in helps.items():
        s = sub.add_parser(cmd, help=text, description=text)
        if cmd != "status":
            s.add_argument("names", nargs="*", help="runs (default: all)")
        if cmd == "start":
            s.add_argument("--threads", type=int, default=None,
                           help="threads per run (default: the cores shared among the runs with work left)")
    text = "a cool-down branch of the run's newest state now, by hand (its process then benchmarks it too)"
    c = sub.add_parser("cooldown", help=text, description=text)
    c.add_argument("name")
    c.add_argument("--iterations", type=int, default=None, help="default: 5%% of the run's iterations so far")
    text = "set a run's length (its milestones follow; extend masked and baseline alike); takes effect at its next start"
    x = sub.add_parser("extend", help=text, description=text)
    x.add_argument("name")
    x.add_argument("--iterations", type=int, required=True)
    r = sub.add_parser("run", help="the background process of one run (what start starts)")
    r.add_argument("name")
    r.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    r.add_argument("--doublings", type=int, default=DOUBLINGS, help=f"milestones per run (default {DOUBLINGS}; 0: none)")
    r.add_argument("--threads", type=int, default=1, help="training threads, benchmark processes (default 1)")
    a = p.parse_args(argv)
    if getattr(a, "threads", None) is not None and a.threads < 1:
        p.error(f"--threads must be at least 1, not {a.threads}")
    os.chdir(a.root if a.cmd == "run" else ROOT)  # relative paths in the configs are relative to the repository root

    def work() -> list[str]:
        if a.cmd in ("run", "cooldown", "extend"):
            check_run(a.root.resolve() if a.cmd == "run" else ROOT, a.name)
        if a.cmd == "run":
            return [run(a.root.resolve(), a.name, a.doublings, threads=a.threads)]
        if a.cmd == "cooldown":
            return [cooldown(ROOT, a.name, a.iterations)]
        if a.cmd == "extend":
            return [extend(ROOT, a.name, a.iterations)]
        if a.cmd == "status":
            return status(ROOT)
        if a.cmd == "start":
            return start(ROOT, a.names or None, threads=a.threads)
        return {"stop": stop, "save": save}[a.cmd](ROOT, a.names or None)

    return report("campaign", work)


def report(prog: str, work) -> int:
    """Run ``work()`` (it returns lines to print) as a command: a ``MaskdnError``, or maskdn missing, is one
    line on stderr and exit status 1."""
    try:
        from maskdn.errors import MaskdnError
    except ImportError:
        print(f"{prog}: error: maskdn is not importable by this Python; activate the environment it is installed in "
              "(the README's install), or use campaign/resume.sh and campaign/stop.sh, which take .venv", file=sys.stderr)
        return 1
    try:
        lines = work()
    except MaskdnError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0

if __name__ == "__main__":
    sys.exit(main())
