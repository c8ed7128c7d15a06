"""The training campaign: open-ended runs carried across sessions and machines through git.

Each folder ``campaign/NAME/`` holds one run's ``config.toml`` (a maskdn ``TrainConfig``, ``schedule =
"wsd"``) and its latest ``state.pt`` (model, EMA, optimizer, iteration, RNG states, validation
history: everything a resumed run needs, a few MB). The run itself trains in the git-ignored folder
named by the config's ``out`` (``runs/campaign/NAME``), one thread each, in the background.

    python campaign/campaign.py start      # resume every run from the newer of its committed and local state
    python campaign/campaign.py status     # iteration, patches, speed and latest validation of each run
    python campaign/campaign.py save       # copy each run's newest state into campaign/, redraw README + figure
    python campaign/campaign.py stop       # SIGTERM (each run saves at its next step), then save
    python campaign/campaign.py cooldown NAME [--iterations N]   # cool-down branch + export of NAME now
    python campaign/campaign.py extend NAME --iterations N        # raise a run's target length

``campaign/resume.sh`` and ``campaign/stop.sh`` are the first and the fourth. Relative paths in the
configs are relative to the repository root, where every command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_STATE_BYTES = 6 * 2**20  # what a committed state may weigh
README_BEGIN, README_END = "<!-- campaign table: begin -->", "<!-- campaign table: end -->"


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


def pid_file(root: Path, name: str) -> Path:
    return run_dir(root, name).with_suffix(".pid")


def log_file(root: Path, name: str) -> Path:
    return run_dir(root, name).with_suffix(".log")


def iteration_of(path: Path) -> int:
    """The iteration of a state file, -1 if there is none."""
    from maskdn.train.checkpoint import load_state

    return load_state(path)["iteration"] if path.is_file() else -1


def running_pid(root: Path, name: str) -> int | None:
    """The pid of the run's background process, if it is alive."""
    path = pid_file(root, name)
    if not path.is_file():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)  # alive (or a zombie, checked next)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (ValueError, OSError):
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    # empty while the process is between fork and exec; otherwise a reused pid shows another command
    return pid if not cmdline or ("maskdn" in cmdline and "train" in cmdline) else None


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


# ---- commands --------------------------------------------------------------------------------------


def start(root: Path = ROOT, names: list[str] | None = None) -> list[str]:
    """Start each run in the background from the newer of its committed and its local state."""
    lines = []
    for name in names or run_names(root):
        pid = running_pid(root, name)
        if pid:
            lines.append(f"{name}: already running (pid {pid})")
            continue
        out, committed = run_dir(root, name), committed_state(root, name)
        out.mkdir(parents=True, exist_ok=True)
        local = out / "state.pt"
        if iteration_of(committed) > iteration_of(local):
            _copy_atomic(committed, local)
        cmd = [sys.executable, "-m", "maskdn", "train", str(config_path(root, name)), "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log_file(root, name), "ab") as log:
            proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        pid_file(root, name).write_text(f"{proc.pid}\n")
        lines.append(f"{name}: started at iteration {max(0, iteration_of(local))} (pid {proc.pid}, log {log_file(root, name)})")
    return lines


def stop(root: Path = ROOT, names: list[str] | None = None, timeout: float = 900.0) -> list[str]:
    """SIGTERM each running run (it saves its state at the next iteration boundary), wait, then :func:`save`."""
    names = names or run_names(root)
    pids = {n: p for n in names if (p := running_pid(root, n))}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(running_pid(root, n) for n in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    lines = [f"{n}: still running after {timeout:.0f} s (pid {p})" if running_pid(root, n) else f"{n}: stopped"
             for n, p in pids.items()]
    return lines + save(root, names)


def save(root: Path = ROOT, names: list[str] | None = None) -> list[str]:
    """Copy each run's newest local state into ``campaign/NAME/state.pt``; redraw the README table and figure."""
    lines = []
    for name in names or run_names(root):
        local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
        it_local, it_committed = iteration_of(local), iteration_of(committed)
        if it_local <= it_committed:
            lines.append(f"{name}: campaign state is current (iteration {max(it_committed, 0)})")
            continue
        size = local.stat().st_size
        if size > MAX_STATE_BYTES:
            raise SystemExit(f"campaign: {local} is {size / 2**20:.1f} MiB, over the {MAX_STATE_BYTES / 2**20:.0f} MiB "
                             "a committed state may weigh")
        _copy_atomic(local, committed)
        lines.append(f"{name}: saved iteration {it_local} ({size / 2**20:.1f} MiB)")
    write_readme(root)
    plot(root)
    return lines


def extend(root: Path, name: str, iterations: int) -> str:
    """Set the run's target length (wsd runs may grow on resume; takes effect at its next start)."""
    path = config_path(root, name)
    lines = path.read_text().splitlines()
    lines = [f"iterations = {iterations}" if line.startswith("iterations =") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    load(root, name)  # a bad value fails here, naming the file
    return f"{name}: iterations = {iterations} (restart the run for it to take effect)"


def cooldown(root: Path, name: str, iterations: int | None = None, fraction: float = 0.05) -> str:
    """Branch a cool-down off the run's newest state, train it here, and keep its export.

    Length: ``iterations``, or ``fraction`` of the run's iterations so far (at least 100). The export is
    copied to ``campaign/cooldowns/NAME-<patches>.safetensors`` and its validation scores recorded in
    ``campaign/cooldowns.json``.
    """
    from maskdn.train import cooldown as branch
    from maskdn.train.checkpoint import load_state

    local, committed = run_dir(root, name) / "state.pt", committed_state(root, name)
    source = local if iteration_of(local) >= iteration_of(committed) else committed
    state = load_state(source)
    it = state["iteration"]
    n = iterations or max(100, round(fraction * it))
    dest = run_dir(root, name).with_name(f"{name}-cd-{it}")
    weights = branch(source, n, dest, threads=1)
    final = load_state(dest / "state.pt")
    patches = it * final["config"]["batch_size"]
    keep = campaign_dir(root) / "cooldowns" / f"{name}-{patches}.safetensors"
    keep.parent.mkdir(exist_ok=True)
    _copy_atomic(weights, keep)
    record = {"run": name, "iteration": it, "patches": patches, "cooldown": n,
              "patches_with_cooldown": final["iteration"] * final["config"]["batch_size"],
              "val_psnr": final["val_history"][-1]["psnr"] if final["val_history"] else {},
              "weights": str(keep.relative_to(root))}
    records = [r for r in read_cooldowns(root) if (r["run"], r["iteration"]) != (name, it)] + [record]
    (campaign_dir(root) / "cooldowns.json").write_text(json.dumps(records, indent=1) + "\n")
    write_readme(root)
    plot(root)
    return f"{name}: cool-down of {n} iterations from iteration {it} → {keep.relative_to(root)}"


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
    summary = {k: state[k] for k in ("iteration", "elapsed")} | {"batch_size": state["config"]["batch_size"]}
    return summary, state.get("val_history", [])


def status(root: Path = ROOT) -> list[str]:
    lines = []
    for name in run_names(root):
        summary, hist = history(root, name)
        pid = running_pid(root, name)
        state = "running" if pid else "stopped"
        if not summary:
            lines.append(f"{name}: {state}, no state yet")
            continue
        it, bs, el = summary["iteration"], summary["batch_size"], summary["elapsed"]
        rate = it * bs / el if el else 0.0
        val = ", ".join(f"{k} {v:.2f}" for k, v in hist[-1]["psnr"].items()) if hist else "no validation yet"
        lines.append(f"{name}: {state}, iteration {it}, {it * bs:,} patches, {el / 3600:.1f} h of training "
                     f"({rate:.1f} patches/s), validation: {val}")
    return lines


# ---- the README table and the figure -------------------------------------------------------------


def table(root: Path) -> str:
    rows = ["| run | masks | iterations | patches seen | training time | latest validation PSNR (dB) | latest cool-down |",
            "|---|---|---|---|---|---|---|"]
    cds = read_cooldowns(root)
    for name in run_names(root):
        cfg = load(root, name)
        summary, hist = history(root, name)
        it = summary.get("iteration", 0)
        masks = (f"input {cfg.input_mask_range[0]:.0%}–{cfg.input_mask_range[1]:.0%}, attention {cfg.attn_mask_ratio:.0%}"
                 if cfg.input_mask or cfg.attn_mask_ratio else "none")
        val = "–" if not hist else ", ".join(f"{k} {v:.2f}" for k, v in hist[-1]["psnr"].items()) + f" (at {hist[-1]['patches']:,})"
        mine = [c for c in cds if c["run"] == name]
        cd = "–" if not mine else (lambda c: f"{c['patches']:,} patches: " + ", ".join(
            f"{k} {v:.2f}" for k, v in c["val_psnr"].items()))(max(mine, key=lambda c: c["iteration"]))
        rows.append(f"| `{name}` | {masks} | {it:,} of {cfg.iterations:,} | {it * cfg.batch_size:,} | "
                    f"{summary.get('elapsed', 0) / 3600:.1f} h | {val} | {cd} |")
    return "\n".join(rows)


def write_readme(root: Path) -> None:
    path = campaign_dir(root) / "README.md"
    if not path.is_file():
        return
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_BEGIN}\n{table(root)}\n{README_END}{tail}")


def plot(root: Path, dest: Path | None = None) -> Path | None:
    """``docs/campaign.png``: validation PSNR against patches seen, one panel per noise, every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: history(root, n)[1] for n in run_names(root)}
    noises = list(dict.fromkeys(k for h in runs.values() for e in h for k in e["psnr"]))
    if not noises:
        return None
    dest = dest or root / "docs" / "campaign.png"
    fig, axes = plt.subplots(1, len(noises), figsize=(4.2 * len(noises), 3.6), squeeze=False)
    cds = read_cooldowns(root)
    for ax, noise in zip(axes[0], noises):
        for i, (name, hist) in enumerate(runs.items()):
            pts = [(e["patches"], e["psnr"][noise]) for e in hist if noise in e["psnr"]]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", marker=".", label=f"{name} (EMA, stable lr)")
            cd = [(c["patches"], c["val_psnr"][noise]) for c in cds if c["run"] == name and noise in c["val_psnr"]]
            if cd:
                ax.plot(*zip(*cd), color=f"C{i}", marker="*", markersize=11, linestyle="none",
                        label=f"{name} after cool-down")
        ax.set_title(noise + ("  (training noise)" if noise == "gaussian:15" else "  (never trained on)"), fontsize=9)
        ax.set_xlabel("training patches seen (64²)")
        ax.set_ylabel("PSNR on 16 held-out CBSD432 crops (dB)")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="campaign.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("start", "stop", "save", "status"):
        s = sub.add_parser(cmd)
        if cmd != "status":
            s.add_argument("names", nargs="*", help="runs (default: all)")
    c = sub.add_parser("cooldown")
    c.add_argument("name")
    c.add_argument("--iterations", type=int, default=None, help="default: 5%% of the run's iterations so far")
    x = sub.add_parser("extend")
    x.add_argument("name")
    x.add_argument("--iterations", type=int, required=True)
    a = p.parse_args(argv)
    os.chdir(ROOT)  # relative paths in the configs are relative to the repository root
    from maskdn.errors import MaskdnError

    try:
        if a.cmd == "cooldown":
            lines = [cooldown(ROOT, a.name, a.iterations)]
        elif a.cmd == "extend":
            lines = [extend(ROOT, a.name, a.iterations)]
        elif a.cmd == "status":
            lines = status(ROOT)
        else:
            lines = {"start": start, "stop": stop, "save": save}[a.cmd](ROOT, a.names or None)
    except MaskdnError as e:
        print(f"campaign: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
