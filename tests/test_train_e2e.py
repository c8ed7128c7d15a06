"""Training end to end, in subprocesses: a SIGKILLed run resumes to identical weights, and a 2-process
DDP run (torchrun, gloo on CPU) equals a 1-process run with the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_train import make_images

from maskdn.model import MaskedSwinIR, preset
from maskdn.train import load_config, train
from maskdn.train.checkpoint import load_state
from maskdn.weights import load_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _config_file(tmp_path, **extra) -> str:
    """A tiny-preset run of the CPU recipe (bf16, both masks), written as a TOML file."""
    lines = {"preset": '"tiny"', "patch_size": 16, "batch_size": 4, "iterations": 40, "warmup": 5,
             "save_every": 5, "log_every": 5, "tensorboard": "false", "device": '"cpu"', "threads": 1, **extra}
    path = tmp_path / "run.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
    return str(path)


def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    data = make_images(tmp_path / "clean")
    config = _config_file(tmp_path)
    cfg = load_config(config, {"data": str(data), "out": str(tmp_path / "straight")})
    straight = train(cfg, progress=False)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maskdn", "train", config, "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_state(out / "state.pt")["iteration"]
    assert 5 <= killed_at < 40 and not (out / "model.safetensors").exists()

    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a, b = load_state(tmp_path / "straight" / "state.pt"), load_state(out / "state.pt")
    assert a["iteration"] == b["iteration"] == 40
    for part in ("model", "optimizer"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part
    ma, mb = load_model(straight).state_dict(), load_model(out / "model.safetensors").state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    rows_a = [r.split(",")[:4] for r in (tmp_path / "straight" / "log.csv").read_text().splitlines()]
    rows_b = [r.split(",")[:4] for r in (out / "log.csv").read_text().splitlines()]
    assert rows_a == rows_b and len(rows_a) == 1 + 40 // 5  # same lr and loss, no duplicated rows


def _tensors(obj, prefix="") -> dict:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    return {prefix: torch.tensor(obj)} if isinstance(obj, (int, float)) else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(tmp_path):
    """Attention masks off (their draw depends on the local batch shape); noise and input masks are
    per sample, so both runs see exactly the same data."""
    data = make_images(tmp_path / "clean")
    config = _config_file(tmp_path, iterations=6, save_every=3, log_every=1, bf16="false", attn_mask_ratio=0.0)
    one = train(load_config(config, {"data": str(data), "out": str(tmp_path / "one")}), progress=False)

    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "maskdn", "train", config, "--data", str(data), "--out", str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    if r.returncode != 0 and "bind" in r.stderr.lower() and "address" in r.stderr.lower():
        pytest.skip(f"cannot bind a local socket here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1  # rank 0 only
    a, b = load_model(one).state_dict(), load_model(out / "model.safetensors").state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-5
    torch.manual_seed(0)
    init = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # trained: the comparison is not vacuous
    assert load_state(out / "state.pt")["world_size"] == 2
    rows_1 = [r.split(",")[:4] for r in (tmp_path / "one" / "log.csv").read_text().splitlines()]
    rows_2 = [r.split(",")[:4] for r in (out / "log.csv").read_text().splitlines()]
    assert [r[0] for r in rows_2] == [r[0] for r in rows_1] and len(rows_2) == 7
    assert all(abs(float(x[2]) - float(y[2])) < 1e-4 for x, y in zip(rows_1[1:], rows_2[1:]))  # mean loss


def test_sigterm_saves_at_the_next_step_and_the_run_resumes_identically(tmp_path):
    """SIGTERM (what ``campaign/stop.sh`` sends) saves the state at the next iteration boundary, not at
    the last ``save_every``: nothing trained is lost, and the resumed run equals an uninterrupted one."""
    data = make_images(tmp_path / "clean")
    config = _config_file(tmp_path, iterations=60, save_every=1000, log_every=1, schedule='"wsd"')
    straight = train(load_config(config, {"data": str(data), "out": str(tmp_path / "straight")}), progress=False)

    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "maskdn", "train", config, "--data", str(data), "--out", str(out)]
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            log = out / "log.csv"
            if log.exists() and len(log.read_text().splitlines()) > 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    message = (tmp_path / "err.txt").read_text().strip().splitlines()[-1]
    assert proc.returncode == 128 + signal.SIGTERM  # stopped on request, the shell's convention; not a failure
    assert message.startswith("maskdn: ") and "error" not in message
    assert "stopped by SIGTERM at iteration" in message and "rerun the same command" in message
    stopped_at = load_state(out / "state.pt")["iteration"]
    assert 3 <= stopped_at < 60 and f"iteration {stopped_at}," in message  # saved where it stopped, save_every or not
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ma, mb = load_model(straight).state_dict(), load_model(out / "model.safetensors").state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
