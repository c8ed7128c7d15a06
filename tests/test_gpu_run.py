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


# ---- the campaign's runs on a GPU session (the default) -------------------------------------------


def _campaign_root(tmp_path: Path, baseline_at: int = 12) -> Path:
    """A repository with tiny campaign runs ``masked`` (at iteration 25) and ``baseline`` (at
    ``baseline_at``) committed; length 80, so their milestones are 10, 20, 40 and 80, and no cool-down
    is recorded."""
    from test_train import make_images

    data = make_images(tmp_path / "data", sizes=((40, 48), (33, 29), (30, 40)))
    root = tmp_path / "repo"
    for name, masks, done in (("masked", "attn_mask_ratio = 0.75\ninput_mask = true\n", 25),
                              ("baseline", "attn_mask_ratio = 0.0\ninput_mask = false\n", baseline_at)):
        folder = root / "campaign" / name
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text(
            f'data = "{data}"\nout = "runs/campaign/{name}"\npreset = "tiny"\npatch_size = 16\nbatch_size = 2\n'
            f'iterations = 80\nschedule = "wsd"\nwarmup = 5\nholdout = 1\nval_every = 20\nval_crop = 16\n{masks}'
            'val_noise = ["gaussian:15"]\nsave_every = 1000\nlog_every = 1\nbf16 = false\ntensorboard = false\n'
            'device = "cpu"\nthreads = 1\n')
        train(load_config(folder / "config.toml", {"out": str(tmp_path / "cpu" / name), "iterations": done}), progress=False)
        shutil.copyfile(tmp_path / "cpu" / name / "state.pt", folder / "state.pt")
    torch.set_num_threads(1)
    return root


def _campaign_session(root: Path, out: Path, minutes: float, *extra: str) -> subprocess.CompletedProcess:
    """The campaign session's dry run on the runs of ``root`` (what a GPU session runs, on the CPU)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "benchmarks/gpu_run.py", "--device", "cpu", "--minutes", str(minutes),
                           "--out", str(out), "--runs", str(root / "campaign"), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _straight(root: Path, tmp_path: Path, name: str, iterations: int) -> dict:
    """The state of campaign run ``name`` trained straight to ``iterations`` on the CPU, from scratch."""
    cfg = load_config(root / "campaign" / name / "config.toml", {"out": str(tmp_path / f"straight-{name}"),
                                                                 "iterations": iterations})
    train(cfg, progress=False)
    torch.set_num_threads(1)
    return load_state(tmp_path / f"straight-{name}" / "state.pt")


def _same_run(a: dict, b: dict) -> bool:
    """Equal weights, and equal validation wherever both validated."""
    scores = [{e["iteration"]: e["psnr"] for e in h["val_history"]} for h in (a, b)]
    shared = scores[0].keys() & scores[1].keys()
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and \
        all(scores[0][i] == scores[1][i] for i in shared) and len(shared) >= 2


def test_campaign_session_stops_each_run_at_its_next_milestone_as_the_cpu_would(tmp_path):
    """With too little time for a cool-down (30 s of margin on top of its estimate), each run stops at its
    next milestone, where the CPU campaign branches it."""
    root = _campaign_root(tmp_path)
    committed = {n: _digest(root / "campaign" / n / "state.pt") for n in ("masked", "baseline")}
    out = tmp_path / "out"
    done = _campaign_session(root, out, 0.5)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["measurements"] == [] and summary["failed"] == []
    runs = {r["run"]: r for r in summary["runs"]}
    assert list(runs) == ["baseline", "masked"]  # the one with less to go first
    assert (runs["baseline"]["start_iteration"], runs["baseline"]["iteration"], runs["baseline"]["milestone"]) == (12, 20, 20)
    assert (runs["masked"]["start_iteration"], runs["masked"]["iteration"], runs["masked"]["milestone"]) == (25, 40, 40)
    assert set(runs["masked"]["files"]) == {"masked-state.pt", "masked-log.csv"}
    assert "reached its milestone at iteration 40" in done.stdout and "without the time for its cool-down" in done.stdout
    assert {n: _digest(root / "campaign" / n / "state.pt") for n in committed} == committed
    # what the GPU machine would compute differently is the arithmetic only: on the CPU, the same run
    b = load_state(out / "masked-state.pt")
    assert _same_run(_straight(root, tmp_path, "masked", 40), b)

    gpu_run = _script()
    assert gpu_run.main(["--apply", str(out), "--runs", str(root / "campaign")]) == 0
    applied = load_state(root / "campaign" / "masked" / "state.pt")
    assert applied["iteration"] == 40 and load_state(root / "campaign" / "baseline" / "state.pt")["iteration"] == 20
    # the machine's settings in the state are this checkout's again (its cool-downs branch from them)
    assert applied["config"]["out"] == "runs/campaign/masked" and b["config"]["out"] != applied["config"]["out"]
    assert not (root / "campaign" / "masked" / "log.csv").exists()  # the campaign commits states only
    assert not (root / "campaign" / "cooldowns.json").exists()
    assert gpu_run.main(["--apply", str(out), "--runs", str(root / "campaign")]) == 1  # not newer any more
    shutil.copyfile(tmp_path / "cpu" / "masked" / "state.pt", root / "campaign" / "masked" / "state.pt")
    assert gpu_run.main(["--apply", str(out), "--runs", str(root / "campaign")]) == 1  # baseline refused …
    assert load_state(root / "campaign" / "masked" / "state.pt")["iteration"] == 40  # … masked applied all the same


def test_parallel_campaign_session_cools_down_at_a_milestone_and_goes_on(tmp_path):
    """With time to spare, both runs at once: each cools down at its milestone as the CPU campaign would
    and trains on to the next one; --apply records the cool-downs, so the CPU only benchmarks them. The
    baseline starts at a milestone without its cool-down (an earlier call stopped it there): it cools
    down first, then trains on."""
    root = _campaign_root(tmp_path, baseline_at=10)
    out = tmp_path / "out"
    done = _campaign_session(root, out, 3, "--parallel")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "started in process" in done.stdout and not list(out.glob(".*"))
    runs = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert (runs["baseline"]["cooldown_at"], runs["baseline"]["iteration"], runs["baseline"]["milestone"]) == (10, 20, 20)
    assert (runs["masked"]["cooldown_at"], runs["masked"]["iteration"], runs["masked"]["milestone"]) == (40, 80, 80)
    assert runs["masked"]["cooldown"] == 100 and set(runs["masked"]["cooldown_val"]) == {"gaussian:15"}
    assert set(runs["masked"]["files"]) == {"masked-state.pt", "masked-log.csv", "masked-cooldown.safetensors"}
    # the branch left the run as it was: the same as a straight CPU run to 80
    assert _same_run(_straight(root, tmp_path, "masked", 80), load_state(out / "masked-state.pt"))

    assert _script().main(["--apply", str(out), "--runs", str(root / "campaign")]) == 0
    records = {r["run"]: r for r in json.loads((root / "campaign" / "cooldowns.json").read_text())}
    assert (records["masked"]["iteration"], records["masked"]["patches"], records["masked"]["cooldown"]) == (40, 80, 100)
    assert records["masked"]["patches_with_cooldown"] == 280 and records["masked"]["val_psnr"] == runs["masked"]["cooldown_val"]
    assert (root / records["baseline"]["weights"]).read_bytes() == (out / "baseline-cooldown.safetensors").read_bytes()


def test_campaign_prepare_refuses_while_a_newer_state_is_not_committed(tmp_path):
    from maskdn.errors import MaskdnError

    root = _campaign_root(tmp_path)
    gpu_run = _script()
    gpu_run.check_campaign_stopped(root / "campaign")  # committed states are the newest: fine
    local = root / "runs" / "campaign" / "masked"
    local.mkdir(parents=True)
    shutil.copyfile(tmp_path / "cpu" / "masked" / "state.pt", local / "state.pt")
    state = load_state(local / "state.pt")
    state["iteration"] = 30
    torch.save(state, local / "state.pt")
    with pytest.raises(MaskdnError, match=r"iteration 30, newer than .*\(25\): run 'python campaign/campaign.py save'"):
        gpu_run.check_campaign_stopped(root / "campaign")


def test_a_campaign_runs_data_path_is_linked_to_the_carried_copy(tmp_path, monkeypatch):
    gpu_run = _script()
    carried = tmp_path / "carry" / "CBSD432"
    carried.mkdir(parents=True)
    (carried / "a.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "carry")
    assert not gpu_run.link_data("../shared/data/CBSD432", tmp_path / "nothing")  # nothing carried: no link
    assert gpu_run.link_data("../shared/data/CBSD432", carried)
    assert (tmp_path / "shared" / "data" / "CBSD432" / "a.png").read_bytes() == b"x"
    assert not gpu_run.link_data("../shared/data/CBSD432", carried)  # there already


def test_campaign_session_reports_a_run_it_cannot_load_and_trains_the_other(tmp_path):
    root = _campaign_root(tmp_path)
    (root / "campaign" / "masked" / "state.pt").write_bytes(b"not a state")
    out = tmp_path / "out"
    done = _campaign_session(root, out, minutes=0.5)
    assert done.returncode == 1, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [f["run"] for f in summary["failed"]] == ["masked"] and "state.pt" in summary["failed"][0]["error"]
    assert [(r["run"], r["iteration"]) for r in summary["runs"]] == [("baseline", 20)]
    assert "masked: FAILED" in done.stdout
