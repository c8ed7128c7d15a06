"""The command line: end to end on real files, one-line errors, no partial outputs, demo and models."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maskdn.cli import main
from maskdn.io import read_image, write_image
from maskdn.model import MaskedSwinIR, preset
from maskdn.weights import save_model
from maskdn.zoo import DEFAULT_MODEL, names, names_default_first


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_image(d / "rgb.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    write_image(d / "deep.tif", rng.integers(0, 65536, (17, 9, 3), dtype=np.uint16))
    write_image(d / "gray.jpg", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    write_image(d / "rgba.png", rng.integers(0, 256, (10, 11, 4), dtype=np.uint8))
    return d


def _stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_denoise_folder_keeps_modes_and_depths(tmp_path, photos, tiny_weights, capsys):
    out = tmp_path / "out"
    rc = main(["denoise", str(photos), "-o", str(out), "--model", str(tiny_weights), "--passes", "2"])
    assert rc == 0
    for name in ("rgb.png", "deep.tif", "gray.jpg", "rgba.png"):
        a, b = read_image(photos / name), read_image(out / name)
        assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(read_image(photos / "rgba.png")[..., 3], read_image(out / "rgba.png")[..., 3])


def test_denoise_single_file_with_tiles_is_seed_reproducible(tmp_path, photos, tiny_weights):
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.png"
        assert main(["denoise", str(photos / "rgb.png"), "-o", str(out), "--model", str(tiny_weights),
                     "--tile", "16", "--tile-overlap", "4", "--seed", "3"]) == 0
        outs.append(read_image(out))
    assert np.array_equal(outs[0], outs[1])


def test_batch_goes_on_past_a_bad_file(tmp_path, photos, tiny_weights, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (photos / "zero.png").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["denoise", str(photos), "-o", str(out), "--model", str(tiny_weights)])
    assert rc == 1
    err = _stderr_lines(capsys)
    assert any("broken.png" in line for line in err) and any("zero.png: empty file" in line for line in err)
    assert not any("Traceback" in line for line in err)
    assert sorted(p.name for p in out.iterdir()) == ["deep.tif", "gray.jpg", "rgb.png", "rgba.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["denoise", "{d}/nope.png", "-o", "{t}/o.png"], "nope.png: no such file"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--model", "{d}/rgb.png"], "rgb.png: not a readable safetensors"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--model", "{d}/junk.pth"],
         "junk.pth: not a readable PyTorch checkpoint (neither a zip archive nor a pickle"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--tile", "4", "--tile-overlap", "2"], "window size"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--tile", "16"], "larger than the tile overlap"),
        (["denoise", "{d}/rgb.png", "-o", "{d}/rgb.png/o.png"], "cannot create"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--passes", "0"], "passes"),
        (["denoise", "{d}/rgb.png", "-o", "{t}/o.png", "--model", "nonesuch"], "nonesuch: no such zoo model"),
    ],
)
def test_bad_input_is_one_line_without_output(tmp_path, photos, tiny_weights, capsys, args, message):
    (photos / "junk.pth").write_bytes(b"junk")
    args = [a.format(d=photos, t=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_weights)]
    rc = main(args)
    err = _stderr_lines(capsys)
    assert rc == 1
    assert any(message in line for line in err), err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "o.png").exists()


def test_never_overwrites_an_input(photos, tiny_weights, capsys):
    before = (photos / "rgb.png").read_bytes()
    rc = main(["denoise", str(photos / "rgb.png"), "-o", str(photos), "--model", str(tiny_weights)])
    assert rc == 1
    assert any("would overwrite the input" in line for line in _stderr_lines(capsys))
    assert (photos / "rgb.png").read_bytes() == before


@pytest.fixture
def small_samples(tmp_path, monkeypatch):
    """Two 40×36 sample photos in place of the bundled ones (the demo's work in seconds)."""
    import maskdn.demo

    d = tmp_path / "samples"
    d.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        write_image(d / f"{name}.png", rng.integers(30, 220, (36, 40, 3), dtype=np.uint8))
    monkeypatch.setattr(maskdn.demo, "sample_paths", lambda: sorted(d.glob("*.png")))
    return d


def _contains(canvas: np.ndarray, tile: np.ndarray) -> bool:
    """Whether ``tile`` appears in ``canvas`` pixel for pixel (at any position)."""
    h, w = tile.shape[:2]
    for y in range(canvas.shape[0] - h + 1):
        for x in np.flatnonzero((canvas[y, : canvas.shape[1] - w + 1] == tile[0, 0]).all(-1)):
            if np.array_equal(canvas[y : y + h, x : x + w], tile):
                return True
    return False


def test_demo_compares_models_side_by_side(tmp_path, tiny_weights, small_samples, capsys):
    """Two models on the same noisy inputs: every photo in the figure, model names in the table and psnr.json."""
    torch.manual_seed(1)
    other = save_model(MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)), tmp_path / "plain.safetensors")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--model", str(tiny_weights), str(other)]) == 0
    data = json.loads((out / "psnr.json").read_text())
    assert data["models"] == ["tiny", "plain"]
    assert len(data["rows"]) == 2 * 5 * 2  # photos × noises × models
    by = {(r["image"], r["noise"], r["model"]): r for r in data["rows"]}
    for (image, noise, _), r in by.items():  # the same noisy input for both models
        assert r["psnr_noisy"] == by[(image, noise, "tiny")]["psnr_noisy"] == by[(image, noise, "plain")]["psnr_noisy"]
    table = capsys.readouterr().out
    assert "`tiny`" in table and "`plain`" in table
    for model in ("tiny", "plain"):
        assert len(list((out / "denoised" / model).glob("*.png"))) == 2 * 5
    canvas = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    square = lambda a: a[:, 2:38]  # the center 36×36 of a 40×36 image: the figure's crop
    shown = [*small_samples.glob("*.png"), *(out / "noisy").glob("*.png"),
             *(out / "denoised" / "plain").glob("*.png")]
    assert len(shown) == 2 + 10 + 10
    for path in shown:  # every sample photo, noisy input and result is on the figure
        assert _contains(canvas, square(read_image(path))), path


def test_models_lists_the_zoo(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == names()
    assert DEFAULT_MODEL in names()
    default = next(r for r in rows if r["default"])
    assert default["training"]["iterations"] > 0 and default["scores"]  # whichever model the rule picks


def test_models_gives_training_time_by_device():
    from maskdn.cli import _training_time

    assert _training_time({"wall_time_s": 4800.0, "threads": 1}) == "80 min on 1 CPU thread(s)"  # no split recorded
    assert _training_time({"wall_time_s": 4800.0, "threads": 1, "device_time_s": {"cpu": 4800.0}}) == \
        "80 min on 1 CPU thread(s)"
    assert _training_time({"wall_time_s": 5400.0, "threads": 1, "device_time_s": {"cuda": 600.0, "cpu": 4800.0}}) == \
        "80 min on 1 CPU thread(s), 10 min on CUDA"


def test_default_model_is_offered_first():
    order = names_default_first()  # the demo's and the web app's order
    assert order[0] == DEFAULT_MODEL and sorted(order) == names() and order[1:] == sorted(order[1:])


def test_train_rejects_unknown_setting(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "lr_typo=1"]) == 1
    err = capsys.readouterr().err
    assert "--set lr_typo: unknown key" in err and err.count("\n") == 1  # one line, from load_config
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "lr"]) == 1
    assert "--set lr: expected key=value" in capsys.readouterr().err


def test_demo_table_marks_the_default_and_averages_each_noise():
    from maskdn.demo import psnr_table

    rows = [{"image": i, "noise": n, "model": m, "psnr_noisy": 20.0 + k, "psnr_denoised": 30.0 + k + (m == "x")}
            for k, i in enumerate(("a", "b")) for n in ("gaussian:25", "poisson:2") for m in (DEFAULT_MODEL, "x")]
    assert psnr_table(rows, [DEFAULT_MODEL, "x"]).splitlines() == [
        f"| noise | noisy PSNR (dB) | `{DEFAULT_MODEL}` (default) | `x` |", "|---|---|---|---|",
        "| gaussian:25 | 20.50 | 30.50 | 31.50 |", "| poisson:2 | 20.50 | 30.50 | 31.50 |"]


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "maskdn", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "denoise" in r.stdout and "demo" in r.stdout


@pytest.mark.parametrize("env, first, policy", [({}, "maskdn", "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "maskdn", "ACTIVE"),
                                               ({}, "torch", None)])
def test_openmp_threads_sleep_when_maskdn_loads_torch(env, first, policy):
    """maskdn sets OMP_WAIT_POLICY=PASSIVE before PyTorch loads (spinning waits made a 2-thread forward
    4-45x slower on a busy machine), unless the user set it or imported torch first."""
    code = f"import os; import {first}; import maskdn; print(os.environ.get('OMP_WAIT_POLICY'))"
    run_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env)
    assert r.returncode == 0 and r.stdout.strip() == str(policy)


def test_threads_option_sets_torch_threads(tmp_path, photos, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    seen: list[int] = []
    assert main(["denoise", str(photos / "gray.jpg"), "-o", str(tmp_path / "o.png"), "--threads", "1"]) == 0
    assert seen == [1]
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'o.png'} (model {DEFAULT_MODEL})"
    assert main(["denoise", str(photos / "gray.jpg"), "-o", str(tmp_path / "p.png"), "--threads", "0"]) == 1
    assert "--threads 0: expected a positive number of threads" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_denoise_says_when_the_output_is_a_folder(tmp_path, photos, capsys):
    """An output whose suffix is not an image format is a folder (a name like "run.v2"); the last line
    says so, since "-o out.xyz" may have been meant as a file."""
    assert main(["denoise", str(photos / "gray.jpg"), "-o", str(tmp_path / "out.xyz"), "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {tmp_path / 'out.xyz'}/ (a folder, results named as their inputs; model {DEFAULT_MODEL})")
    assert (tmp_path / "out.xyz" / "gray.jpg").is_file()


def test_noise_command_writes_seeded_copies(tmp_path, photos, capsys):
    out = tmp_path / "noisy"
    args = ["noise", str(photos / "rgb.png"), str(photos / "gray.jpg"), "-o", str(out), "--noise", "poisson:2", "gaussian:25"]
    assert main(args) == 0
    first = {p.relative_to(out): read_image(p) for p in sorted(out.rglob("*.png"))}
    assert sorted(str(k) for k in first) == ["gaussian_25/gray.png", "gaussian_25/rgb.png", "poisson_2/gray.png", "poisson_2/rgb.png"]
    assert first[Path("poisson_2/gray.png")].shape == (12, 12)
    assert main(args) == 0  # same seed: the same files
    assert all(np.array_equal(read_image(out / k), v) for k, v in first.items())
    assert main(["noise", str(photos), "-o", str(out), "--noise", "fog:1"]) == 1
    assert "fog:1: unknown noise" in capsys.readouterr().err
    (photos / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # a folder with a bad file: the others done, counted
    assert main(["noise", str(photos), "-o", str(tmp_path / "n2"), "--noise", "gaussian:25"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "maskdn: 1 file(s) failed" and "torn.png" in err[-2] and (tmp_path / "n2/gaussian_25/rgb.png").exists()


def test_bench_command_end_to_end(tmp_path, photos, tiny_weights, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rgb.png").write_bytes((photos / "rgb.png").read_bytes())
    write_image(data / "b.png", np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    out = tmp_path / "bench"
    args = ["bench", "--data", str(data), "--model", str(tiny_weights), "--method", "noisy",
            "--noise", "gaussian:25", "--passes", "2", "--out", str(out)]
    assert main(args) == 0
    assert "| noisy |" in capsys.readouterr().out.replace("**", "")
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 2 * (1 + 2)  # images × (noisy + model at 1 and 2 passes)
    for name in ("summary.csv", "summary.md", "curves.png", "gallery.png"):
        assert (out / name).stat().st_size > 0
    assert main(["bench", "--data", str(data), "--out", str(out)]) == 1
    assert "at least one --model or --method" in capsys.readouterr().err
