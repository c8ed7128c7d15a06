"""The GPU session script's dry run: the whole of ``benchmarks/gpu_run.py`` on the CPU (machine check,
measurement, resuming the committed tiny runs under a time limit, cool-down exports, summary), so the
script cannot rot between GPU sessions; then ``--apply`` of what it returned, and the pieces it relies on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdn.train import TrainingStopped, load_config, train
from maskdn.train.checkpoint import load_state
from maskdn.train.config import MAY_CHANGE_ON_RESUME

REPO = Path(__file__).resolve().parents[1]
RUNS = ("gpu-tiny-masked", "gpu-tiny-baseline")


def _script():
    spec = importlib.util.spec_from_file_location("gpu_run", REPO / "benchmarks" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The documented dry-run command, once for the module: ``(out folder, summary, committed digests)``."""
    out = tmp_path_factory.mktemp("gpu-out")
    committed = {n: _digest(REPO / "campaign" / n / "state.pt") for n in RUNS}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_run.py", "--device", "cpu", "--preset", "tiny",
                           "--minutes", "0.2", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), committed, done.stdout


def test_dry_run_resumes_both_committed_runs_and_returns_their_files(dry_run):
    out, summary, committed, stdout = dry_run
    assert [r["run"] for r in summary["runs"]] == list(RUNS)
    for r in summary["runs"]:
        before = load_state(REPO / "campaign" / r["run"] / "state.pt")
        assert r["start_iteration"] == before["iteration"] > 0  # resumed, not started again
        assert r["iteration"] > r["start_iteration"]
        assert r["cooldown"] >= 1 and set(r["cooldown_val"]) == {"gaussian:15"}
        files = {f"{r['run']}-state.pt", f"{r['run']}-log.csv", f"{r['run']}-cooldown.safetensors"}
        assert set(r["files"]) == files
        for name in files:
            assert (out / name).stat().st_size == r["files"][name] <= 16 * 2**20
        after = load_state(out / f"{r['run']}-state.pt")
        assert after["iteration"] == r["iteration"]
        # the same run continued: only settings that do not change what is computed may differ
        changed = {k for k, v in after["config"].items() if before["config"][k] != v}
        assert changed <= MAY_CHANGE_ON_RESUME, changed
        log = (out / f"{r['run']}-log.csv").read_text().splitlines()
        assert log[0].startswith("iteration,") and int(log[-1].split(",")[0]) == r["iteration"]
    # a session never writes the committed runs
    assert {n: _digest(REPO / "campaign" / n / "state.pt") for n in RUNS} == committed
    assert "Summary" in stdout and "patches/s" in stdout


def test_dry_run_measures_and_checks_each_setting(dry_run):
    _, summary, _, _ = dry_run
    rows = {(m["dtype"], m["compile"]): m for m in summary["measurements"]}
    assert set(rows) == {("float32", False), ("bfloat16", False)}  # no compiling on the CPU
    ref = rows[("float32", False)]
    assert ref["correct"] and ref["loss_rel"] == 0 and ref["grad_cos"] == pytest.approx(1.0)
    bf16 = rows[("bfloat16", False)]
    assert "skipped" in bf16 or (bf16["forward_psnr_db"] < 200 and bf16["grad_cos"] > 0.9)
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["missing"] == []


def test_apply_takes_the_returned_runs_and_refuses_them_twice(dry_run, tmp_path):
    out, summary, _, _ = dry_run
    gpu_run = _script()
    runs = tmp_path / "campaign"
    for n in RUNS:
        shutil.copytree(REPO / "campaign" / n, runs / n)
    assert gpu_run.main(["--apply", str(out), "--runs", str(runs)]) == 0
    for r in summary["runs"]:
        assert load_state(runs / r["run"] / "state.pt")["iteration"] == r["iteration"]
        assert (runs / r["run"] / "log.csv").read_bytes() == (out / f"{r['run']}-log.csv").read_bytes()
        assert load_config(runs / r["run"] / "config.toml") == load_config(REPO / "campaign" / r["run"] / "config.toml")
    assert gpu_run.main(["--apply", str(out), "--runs", str(runs)]) == 1  # not newer than what is there now


def test_choose_takes_the_fastest_correct_setting_and_keeps_a_runs_precision():
    choose = _script().choose
    rows = [{"bf16": False, "compile": False, "correct": True, "train_step_s": 0.30},
            {"bf16": True, "compile": False, "correct": True, "train_step_s": 0.20},
            {"bf16": False, "compile": True, "correct": True, "train_step_s": 0.25},
            {"bf16": True, "compile": True, "correct": False, "train_step_s": 0.10}]
    assert (choose(rows, None)["bf16"], choose(rows, None)["compile"]) == (True, False)
    assert (choose(rows, False)["bf16"], choose(rows, False)["compile"]) == (False, True)
    assert choose([], True) == {"bf16": True, "compile": False, "dtype": "bfloat16", "measured": False}


def test_time_limit_stops_and_saves(tmp_path):
    """What a session relies on: ``train(..., time_limit=s)`` stops after the iteration that passes the
    limit, saves, and raises TrainingStopped (the dry run above resumes such states)."""
    cfg = load_config(REPO / "campaign" / "gpu-tiny-masked" / "config.toml",
                      {"out": str(tmp_path / "run"), "data": str(REPO / "src" / "maskdn" / "samples")})
    with pytest.raises(TrainingStopped, match="stopped at the time limit at iteration 1, state saved"):
        train(cfg, progress=False, time_limit=1e-3)
    assert load_state(tmp_path / "run" / "state.pt")["iteration"] == 1
    torch.set_num_threads(1)  # the trainer set the config's threads; keep the session's setting
