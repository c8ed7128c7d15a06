"""One convention for every subcommand: model lists, -o/--out, the run options, device and output errors."""

from __future__ import annotations

import argparse
import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdn.cli import HIDDEN_ALIASES, build_parser, main
from maskdn.io import IMAGE_SUFFIXES, write_image
from maskdn.model import MaskedSwinIR, preset
from maskdn.noise import NOISES
from maskdn.weights import save_model

RUNS_A_MODEL = ("denoise", "demo", "evaluate", "bench", "analyze")
NOISE_TAKING = ("noise", "evaluate", "bench", "analyze")


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(d / f"{name}.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return d


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(sub: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in sub._actions if flag in a.option_strings), None)


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]


# -- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, base", [
    ("bench", ["--data", "d"]),
    ("analyze", ["--data", "d"]),
    ("demo", []),
])
def test_several_models_a_list_or_a_repeated_flag(command, base):
    parse = build_parser().parse_args
    assert parse([command, *base, "--model", "a", "b"]).model == ["a", "b"]
    assert parse([command, *base, "--model", "a", "--model", "b"]).model == ["a", "b"]  # appends, never overwrites
    assert parse([command, *base, "--model", "a", "b", "--model", "c"]).model == ["a", "b", "c"]


@pytest.mark.parametrize("flag, command, base", [
    ("--data", "bench", []), ("--data", "evaluate", []), ("--noise", "bench", ["--data", "d"]),
    ("--noise", "evaluate", ["--data", "d"]), ("--noise", "analyze", ["--data", "d", "--model", "m"]),
    ("--noise", "noise", ["x.png", "-o", "o"]), ("--method", "bench", ["--data", "d"]),
    ("--noisy", "evaluate", []), ("--clean", "bench", []),
])
def test_every_list_flag_appends_when_repeated(flag, command, base):
    args = build_parser().parse_args([command, *base, flag, "a", flag, "b", "c"])
    assert getattr(args, flag.lstrip("-")) == ["a", "b", "c"]


@pytest.mark.parametrize("command, base", [("denoise", ["x.png", "-o", "o"]), ("evaluate", ["--data", "d"])])
def test_one_model_given_twice_is_an_error(command, base, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, *base, "--model", "a", "--model", "b"])
    assert e.value.code == 2
    assert "--model given twice" in capsys.readouterr().err


def test_one_output_flag_spelling_old_one_hidden():
    subs = _subparsers()
    for name, sub in subs.items():
        out = _option(sub, "--out")
        if name == "models":
            assert out is None
            continue
        assert out is not None and out.option_strings[:2] == ["-o", "--out"], name
        assert "--output" in out.option_strings  # the old spelling still parses ...
        assert "--output" not in sub.format_help(), name  # ... but is not shown
    assert build_parser().parse_args(["export", "run", "--output", "w.safetensors"]).out == "w.safetensors"
    assert HIDDEN_ALIASES == {"--output"}


@pytest.mark.parametrize("command", RUNS_A_MODEL)
def test_every_model_running_subcommand_has_the_run_options(command):
    sub = _subparsers()[command]
    flags = ["--device", "--seed", "--attn-mask-ratio"] + ([] if command == "analyze" else ["--passes", "--tile", "--bf16"])
    for flag in flags:
        action = _option(sub, flag)
        assert action is not None and action.help, (command, flag)
    if command != "analyze":
        passes = _option(sub, "--passes")
        assert passes.default == 1 and "(default: 1)" in passes.help
    assert _option(sub, "--device").default == "cpu"


@pytest.mark.parametrize("command", NOISE_TAKING)
def test_help_lists_noise_names_and_levels(command):
    text = _subparsers()[command].format_help()
    assert "name:level" in text
    for name, noise in NOISES.items():
        assert f"{name}" in text and f"level {noise.low:g}–{noise.high:g}" in text, name


# -- devices and pipes ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device, message", [("cuda", "--device cuda:"), ("cpux", "--device cpux: not a device name")])
@pytest.mark.parametrize("command", RUNS_A_MODEL)
def test_missing_device_is_one_line_on_every_subcommand(command, device, message, tmp_path, images, tiny_weights, capsys):
    args = {
        "denoise": ["denoise", str(images), "-o", str(tmp_path / "o")],
        "demo": ["demo", "-o", str(tmp_path / "o")],
        "evaluate": ["evaluate", "--data", str(images)],
        "bench": ["bench", "--data", str(images), "--method", "noisy", "-o", str(tmp_path / "o")],
        "analyze": ["analyze", "--data", str(images), "-o", str(tmp_path / "o")],
    }[command]
    assert main([*args, "--model", str(tiny_weights), "--device", device]) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_models_into_a_closed_pipe_is_quiet():
    """``maskdn models | head`` when head has gone: no BrokenPipe traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "maskdn", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line is written (importing takes longer)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141)


# -- outputs -----------------------------------------------------------------------------------------


def test_output_suffix_that_cannot_be_written_is_refused_first(tmp_path, images, tiny_weights, capsys):
    """An image format Pillow knows but maskdn does not write (e.g. -o result.gif) must not become a folder."""
    suffix = next(s for s in (".gif", ".ico", ".pcx", ".ppm") if s not in IMAGE_SUFFIXES)
    out = tmp_path / f"result{suffix}"
    assert main(["denoise", str(images / "a.png"), "-o", str(out), "--model", str(tmp_path / "nonesuch.safetensors")]) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and f"result{suffix}: cannot write {suffix} images" in err[0], err  # before the model
    assert not out.exists()  # no folder named result.gif
    dotted = tmp_path / "out.v2"  # a suffix that is no image format: a folder
    assert main(["denoise", str(images / "a.png"), "-o", str(dotted), "--model", str(tiny_weights)]) == 0
    assert (dotted / "a.png").is_file()


def test_folder_input_says_what_it_skipped(tmp_path, images, tiny_weights, capsys):
    (images / "notes.txt").write_text("not an image")
    (images / "c.xcf").write_bytes(b"gimp")
    (images / "deeper").mkdir()
    out = tmp_path / "out"
    assert main(["denoise", str(images), "-o", str(out), "--model", str(tiny_weights)]) == 0
    err = _err_lines(capsys)
    skipped = [line for line in err if "skipped" in line]
    assert len(skipped) == 2, err
    assert any("2 file(s)" in line and "c.xcf" in line and "notes.txt" in line and "not a" in line for line in skipped)
    assert any("deeper" in line and "folders are not searched" in line for line in skipped)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def _out_args(command: str, out: Path, images: Path, weights: Path) -> list[str]:
    return {
        "denoise": ["denoise", str(images), "-o", str(out), "--model", str(weights)],
        "noise": ["noise", str(images), "-o", str(out), "--noise", "gaussian:15"],
        "demo": ["demo", "-o", str(out), "--model", str(weights)],
        "bench": ["bench", "--data", str(images), "--method", "noisy", "--noise", "gaussian:15", "-o", str(out)],
        "analyze": ["analyze", "--data", str(images), "--model", str(weights), "-o", str(out), "--crop", "0"],
        "evaluate": ["evaluate", "--data", str(images), "--model", "noisy", "--noise", "gaussian:15", "-o", str(out)],
        "export": ["export", str(images), "-o", str(out)],
    }[command]


@pytest.mark.parametrize("command", ["denoise", "noise", "demo", "bench", "analyze"])
def test_out_that_is_an_existing_file(command, tmp_path, images, tiny_weights, capsys):
    out = tmp_path / "taken"
    out.write_text("the user's file")
    assert main(_out_args(command, out, images, tiny_weights)) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and "taken: exists and is not a folder" in err[0], err
    assert out.read_text() == "the user's file"


@pytest.mark.parametrize("command", ["denoise", "noise", "demo", "bench", "analyze", "evaluate", "export"])
def test_out_that_is_a_symlink_loop(command, tmp_path, images, tiny_weights, capsys):
    out = tmp_path / ("loop.csv" if command == "evaluate" else "loop.safetensors" if command == "export" else "loop")
    out.symlink_to(out.name)
    assert main(_out_args(command, out, images, tiny_weights)) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and "a broken symlink or a symlink loop" in err[0], err
    assert out.is_symlink() and str(out.readlink()) == out.name  # left as it was


def test_a_symlink_loop_inside_the_output_folder(tmp_path, images, tiny_weights, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to("a.png")
    assert main(["denoise", str(images), "-o", str(out), "--model", str(tiny_weights)]) == 1
    err = _err_lines(capsys)
    assert any("a.png: a symlink loop" in line for line in err) and not any("Traceback" in line for line in err), err
    assert (out / "a.png").is_symlink() and (out / "b.png").is_file()  # the loop kept, the other image written


@pytest.mark.parametrize("command", ["denoise", "noise", "demo", "bench", "analyze"])
def test_new_out_folder_on_a_read_only_filesystem(command, tmp_path, images, tiny_weights, capsys, monkeypatch):
    """mkdir failing with EROFS (as on a read-only mount): one line, nothing written."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out or out in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    out = tmp_path / "ro" / "new"
    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(_out_args(command, out, images, tiny_weights)) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and "new: cannot create the output folder (Read-only file system)" in err[0], err
    assert not out.exists()


def test_bench_runs_models_tiled_and_with_a_set_mask_ratio(tmp_path, images, tiny_weights):
    """bench --tile/--attn-mask-ratio reach the model: the records say so and match an evaluation run alike."""
    from maskdn.evaluate import evaluate
    from maskdn.weights import load_model

    big = tmp_path / "big"
    big.mkdir()
    write_image(big / "a.png", np.random.default_rng(2).integers(0, 256, (44, 40, 3), dtype=np.uint8))
    out = tmp_path / "b"
    assert main(["bench", "--data", str(big), "--model", str(tiny_weights), "--noise", "gaussian:25",
                 "--tile", "36", "--attn-mask-ratio", "0", "-o", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 1 and all(r["tile"] == 36 and r["attn_mask_ratio"] == 0 for r in records)
    model = load_model(tiny_weights, attn_mask_ratio=0)
    want = evaluate(model, [big], ["gaussian:25"], tile=36, progress=False)["big"]["gaussian:25"]
    assert round(float(np.mean([r["psnr"] for r in records])), 2) == want
    from maskdn.generalization import run_bench

    untiled = run_bench([big], [str(tiny_weights)], ["gaussian:25"], None, passes=1, attn_mask_ratio=0,
                        progress=False, lpips=False)
    assert untiled[0]["psnr"] != records[0]["psnr"]  # the tiles made a difference the records must not hide
