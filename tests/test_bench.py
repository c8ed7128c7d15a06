"""The benchmark runner and its reports, end to end on tiny images and a tiny random-weight model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maskdn import bench
from maskdn.bench import PAPER_GRID, run_bench
from maskdn.errors import MaskdnError
from maskdn.evaluate import load_dataset
from maskdn.io import write_image
from maskdn.metrics import psnr
from maskdn.model import MaskedSwinIR, preset
from maskdn.noise import apply_noise, noise_seed, parse_noise
from maskdn.report import summarize, write_summary_md
from maskdn.weights import save_model

NOISES = ["gaussian:25", "poisson:2"]
FIELDS = {"dataset", "image", "method", "passes", "noise", "level", "psnr", "ssim", "seed"}


def _image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    base = np.stack([x * 9, y * 9, (x + y) * 4], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    clean = root / "tinyset"
    clean.mkdir()
    for name in ("a", "b"):
        write_image(clean / f"{name}.png", _image(rng))
    real = root / "tinyreal"
    real.mkdir()
    mean = _image(rng)
    write_image(real / "p1_mean.png", mean)
    write_image(real / "p1_real.png", np.clip(mean + rng.normal(0, 10, mean.shape), 0, 255).astype(np.uint8))
    torch.manual_seed(0)
    model = root / "tiny.safetensors"
    save_model(MaskedSwinIR(preset("tiny")), model)
    return {"root": root, "dirs": [clean, real], "model": model}


@pytest.fixture(scope="module")
def first_run(data):
    out = data["root"] / "out"
    records = run_bench(data["dirs"], ["noisy", str(data["model"])], NOISES, out, seed=0, passes=2, progress=False)
    return out, records


def test_paper_grid_parses():
    assert len(PAPER_GRID) == 28
    assert "speckle:0.018" in PAPER_GRID and "camera:5" in PAPER_GRID
    for spec in PAPER_GRID:
        parse_noise(spec)


def test_records_and_files(data, first_run):
    out, records = first_run
    # clean set: 2 images × 2 noises × (noisy, model ×1, model ×2); real set: 1 pair × 3
    assert len(records) == 2 * 2 * 3 + 3
    assert all(set(r) == FIELDS for r in records)
    assert json.loads((out / "results.json").read_text()) == records
    assert {(r["method"], r["passes"]) for r in records} == {("noisy", 1), ("tiny", 1), ("tiny", 2)}
    real = [r for r in records if r["dataset"] == "tinyreal"]
    assert len(real) == 3 and all(r["noise"] == "real" and r["level"] is None for r in real)
    for name in ("results.json", "summary.csv", "summary.md", "curves.png", "gallery.png"):
        assert (out / name).is_file()
    for name in ("curves.png", "gallery.png"):
        with Image.open(out / name) as im:
            im.verify()
    md = (out / "summary.md").read_text()
    assert "## tinyset" in md and "## tinyreal" in md and "tiny ×2" in md and "**" in md
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 3 * 2 + 3


def test_noisy_psnr_matches_apply_noise(data, first_run):
    _, records = first_run
    samples = {s.name: s for s in load_dataset(data["dirs"][0])}
    for r in records:
        if r["method"] != "noisy" or r["dataset"] != "tinyset":
            continue
        spec = f"{r['noise']}:{r['level']:g}"
        s = samples[r["image"]]
        assert r["psnr"] == psnr(apply_noise(s.clean, spec, seed=noise_seed(0, s.name, spec)), s.clean)


def test_summary_bold_best():
    recs = [
        {"dataset": "d", "image": i, "method": m, "passes": 1, "noise": "gaussian", "level": 25.0,
         "psnr": p, "ssim": 0.5, "seed": 0}
        for i in ("x", "y") for m, p in (("noisy", 20.0), ("good", 30.0))
    ]
    rows = summarize(recs)
    assert [(r["label"], r["psnr"], r["images"]) for r in rows] == [("noisy", 20.0, 2), ("good", 30.0, 2)]
    from maskdn.report import summary_markdown

    md = summary_markdown(recs)
    assert "| good | **30.00 / 0.500** |" in md and "| noisy | 20.00 / 0.500 |" in md


def test_resume_recomputes_only_missing(data, first_run, tmp_path, monkeypatch):
    _, first = first_run
    out = tmp_path / "resume"
    calls = {"noisy": 0, "model": 0}

    def counting_noisy(x):
        calls["noisy"] += 1
        return x

    real_denoise = bench.denoise_tensor

    def counting_denoise(*args, **kwargs):
        calls["model"] += 1
        return real_denoise(*args, **kwargs)

    monkeypatch.setattr(bench, "denoise_tensor", counting_denoise)
    methods = [("noisy", counting_noisy), str(data["model"])]
    run_bench(data["dirs"], methods, NOISES, out, passes=2, progress=False, reports=False)
    assert calls == {"noisy": 5, "model": 10}
    stored = json.loads((out / "results.json").read_text())
    assert stored == first
    # drop one noisy record and two model records, then resume
    dropped = [0, 1, 5]
    kept = [r for i, r in enumerate(stored) if i not in dropped]
    (out / "results.json").write_text(json.dumps(kept))
    calls.update(noisy=0, model=0)
    again = run_bench(data["dirs"], methods, NOISES, out, passes=2, progress=False)
    want = {"noisy": sum(stored[i]["method"] == "noisy" for i in dropped)}
    want["model"] = len(dropped) - want["noisy"]
    assert calls == want
    assert again == first
    assert json.loads((out / "results.json").read_text()) == first
    with Image.open(out / "gallery.png") as im:
        im.verify()


def test_limit_and_builtin_nlm(data, tmp_path):
    recs = run_bench(data["dirs"][:1], ["nlm"], ["gaussian:25"], tmp_path, limit=1, progress=False, reports=False)
    assert len(recs) == 1 and recs[0]["method"] == "nlm" and recs[0]["passes"] == 1
    noisy = run_bench(data["dirs"][:1], ["noisy"], ["gaussian:25"], tmp_path / "n", limit=1, progress=False, reports=False)
    assert recs[0]["psnr"] > noisy[0]["psnr"]


def test_bm3d_missing(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d → ImportError even if installed
    with pytest.raises(MaskdnError, match=r"pip install bm3d \(non-commercial licence\)"):
        run_bench(data["dirs"], ["bm3d"], NOISES, tmp_path, progress=False)
    assert not (tmp_path / "results.json").exists()


def test_unknown_method(data, tmp_path):
    with pytest.raises(MaskdnError, match="no-such-method"):
        run_bench(data["dirs"], ["no-such-method"], NOISES, tmp_path, progress=False)


def test_write_summary_md_atomic(tmp_path):
    with pytest.raises(MaskdnError):
        write_summary_md([], tmp_path / "missing" / "summary.md")


def test_bm3d_method_when_installed():
    pytest.importorskip("bm3d")
    from maskdn.bench import resolve_method

    torch.manual_seed(0)
    clean = torch.full((3, 32, 32), 0.5)
    noisy = (clean + 0.06 * torch.randn(3, 32, 32)).clamp(0, 1)
    out = resolve_method("bm3d").fn(noisy, 1, None)
    assert out.shape == noisy.shape
    assert (out - clean).abs().mean() < 0.5 * (noisy - clean).abs().mean()
