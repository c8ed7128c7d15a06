"""The training campaign's mechanics (campaign/campaign.py): runs start in the background from their
committed state, stop with their newest state copied back for the commit, and continue on a "new
machine" (no local run folders) to exactly the weights of one uninterrupted run."""

from __future__ import annotations

import importlib.util
import shutil
import time

import pytest
import torch
from conftest import REPO
from test_train import make_images

from maskdn.train import load_config, train
from maskdn.train.checkpoint import load_state

spec = importlib.util.spec_from_file_location("campaign", REPO / "campaign" / "campaign.py")
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)


def _wait_until(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository with one campaign run of the tiny preset (hold-out validation on, saves only on stop)."""
    data = make_images(tmp_path / "data", sizes=((40, 48), (33, 29), (30, 40)))
    run = tmp_path / "repo" / "campaign" / "tiny"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'data = "{data}"\nout = "runs/campaign/tiny"\npreset = "tiny"\npatch_size = 16\nbatch_size = 2\n'
        'iterations = 80\nschedule = "wsd"\nwarmup = 5\nholdout = 1\nval_every = 20\nval_crop = 16\n'
        'val_noise = ["gaussian:15", "poisson:3"]\nsave_every = 1000\nlog_every = 1\nbf16 = false\n'
        'tensorboard = false\ndevice = "cpu"\nthreads = 1\n')
    (run.parent / "README.md").write_text(f"# runs\n{campaign.README_BEGIN}\n{campaign.README_END}\nend\n")
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path / "repo"


def _log_rows(root) -> int:
    log = root / "runs" / "campaign" / "tiny" / "log.csv"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_runs_survive_a_stop_and_a_new_machine(root):
    assert "started at iteration 0" in campaign.start(root)[0]
    assert "already running" in campaign.start(root)[0]
    _wait_until(lambda: _log_rows(root) > 25)  # past the first validation at iteration 20
    lines = campaign.stop(root)
    assert lines[0] == "tiny: stopped" and "saved iteration" in lines[1]
    committed = root / "campaign" / "tiny" / "state.pt"
    first = load_state(committed)["iteration"]
    assert 20 < first < 80 and campaign.running_pid(root, "tiny") is None
    readme = (root / "campaign" / "README.md").read_text()
    assert f"| `tiny` | input 0%–90%, attention 75% | {first:,} of 80 | {first * 2:,} |" in readme
    assert "gaussian:15" in readme and readme.endswith("end\n")
    assert (root / "docs" / "campaign.png").stat().st_size > 0

    shutil.rmtree(root / "runs")  # a new machine: only what was committed is there
    assert f"started at iteration {first}" in campaign.start(root)[0]
    _wait_until(lambda: campaign.running_pid(root, "tiny") is None)
    assert "saved iteration 80" in campaign.save(root)[0]
    assert "campaign state is current (iteration 80)" in campaign.save(root)[0]

    cfg = load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(root / "straight")})
    train(cfg, progress=False)
    a, b = load_state(root / "straight" / "state.pt"), load_state(committed)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert [e["iteration"] for e in b["val_history"]] == [20, 40, 60, 80]
    assert [e["psnr"] for e in b["val_history"]] == [e["psnr"] for e in a["val_history"]]

    # a cool-down branch: the committed state is untouched, its export and scores are kept
    before = committed.read_bytes()
    line = campaign.cooldown(root, "tiny", 4)
    assert "cool-down of 4 iterations from iteration 80" in line
    assert committed.read_bytes() == before
    record = campaign.read_cooldowns(root)[0]
    assert record["patches"] == 160 and record["patches_with_cooldown"] == 168 and set(record["val_psnr"]) == {"gaussian:15", "poisson:3"}
    assert (root / record["weights"]).is_file()
    assert "160 patches: gaussian:15" in (root / "campaign" / "README.md").read_text()

    # a longer target resumes the finished run (wsd)
    assert "iterations = 90" in campaign.extend(root, "tiny", 90)
    assert load_config(root / "campaign" / "tiny" / "config.toml").iterations == 90
