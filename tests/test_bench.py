"""The benchmark runner and its reports, end to end on tiny images and a tiny random-weight model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maskdn import generalization as bench
from maskdn.datasets import load_dataset
from maskdn.errors import MaskdnError
from maskdn.generalization import PAPER_GRID, run_bench
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
    # records carried to another machine without the gallery's crop cache: the gallery's model units
    # (first image, each condition) run again for their crops and give the same records
    (out / "gallery_crops.npz").unlink()
    calls.update(noisy=0, model=0)
    assert run_bench(data["dirs"], methods, NOISES, out, passes=2, progress=False) == first
    assert calls == {"noisy": 0, "model": len(NOISES) * 2}  # 2 passes per unit
    with np.load(out / "gallery_crops.npz") as z:
        panels = [(cond, label) for cond, label, _ in json.loads(str(z["meta"]))]
    model_panels = sorted(c for c, label in panels if label != "noisy input")
    assert model_panels == sorted(NOISES * 2)  # per condition the model's 1-pass and 2-pass crops


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


def test_write_summary_md_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the old summary intact and no temporary file behind."""
    from pathlib import Path

    path = tmp_path / "summary.md"
    path.write_text("the old summary\n", encoding="utf-8")
    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):  # half the text reaches the disk, then it is full
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(MaskdnError, match=r"summary\.md: cannot write \(.*No space left on device"):
        write_summary_md([], path, notes=["a note"])
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == "the old summary\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]  # no temporary file left
    write_summary_md([], path, notes=["a note"])  # without a failure it is replaced
    assert path.read_text(encoding="utf-8").startswith("# Benchmark summary") and "- a note" in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    with pytest.raises(MaskdnError, match="does not exist"):  # a missing folder: an error, nothing written
        write_summary_md([], tmp_path / "missing" / "summary.md")


def test_bm3d_method_when_installed():
    pytest.importorskip("bm3d")
    from maskdn.generalization import resolve_method

    torch.manual_seed(0)
    clean = torch.full((3, 32, 32), 0.5)
    noisy = (clean + 0.06 * torch.randn(3, 32, 32)).clamp(0, 1)
    out = resolve_method("bm3d").fn(noisy, 1, None)
    assert out.shape == noisy.shape
    assert (out - clean).abs().mean() < 0.5 * (noisy - clean).abs().mean()


# --------------------------------------------------------------------------------------------------
# BM3D with the true σ
# --------------------------------------------------------------------------------------------------


def test_true_sigma():
    from maskdn.classical import defined_for
    from maskdn.noise import true_sigma

    assert true_sigma("gaussian:25") == 25 / 255
    assert true_sigma("correlated:45") == pytest.approx(45 / 255 / 3)
    assert [true_sigma(c) for c in ("poisson:2", "speckle:0.03", "mixture:3", "jpeg:10", "camera:1", "real")] == [None] * 6
    assert defined_for("bm3d-oracle", "gaussian:15") and not defined_for("bm3d-oracle", "poisson:2")
    assert defined_for("bm3d", "poisson:2") and defined_for("nlm", "real")
    # the correlated noise's added std is what true_sigma says (unclipped, unquantized)
    x = torch.full((3, 128, 128), 0.5)
    n = apply_noise(x, "correlated:45", seed=3, quantize=False) - x
    assert float(n.std()) == pytest.approx(true_sigma("correlated:45"), rel=0.05)


def test_bm3d_oracle_only_where_sigma_is_defined(data, tmp_path):
    pytest.importorskip("bm3d")
    out = tmp_path / "oracle"
    recs = run_bench(data["dirs"], ["bm3d", "bm3d-oracle"], ["gaussian:25", "poisson:2"], out, limit=1,
                     progress=False, lpips=False)
    got = {(r["dataset"], r["method"], r["noise"]) for r in recs}
    assert got == {("tinyset", "bm3d", "gaussian"), ("tinyset", "bm3d", "poisson"),
                   ("tinyset", "bm3d-oracle", "gaussian"), ("tinyreal", "bm3d", "real")}
    md = (out / "summary.md").read_text()
    assert "bm3d-oracle is BM3D given the true noise std" in md
    assert "| bm3d-oracle | " in md and "–" in md.split("| bm3d-oracle |")[1].splitlines()[0]
    by = {(r["method"], r["noise"]): r for r in recs if r["dataset"] == "tinyset"}
    # with the true σ BM3D is at least as good as with a (wavelet-MAD) estimate, up to a small margin
    assert by[("bm3d-oracle", "gaussian")]["psnr"] > by[("bm3d", "gaussian")]["psnr"] - 0.5
    from maskdn.classical import denoise_classical

    with pytest.raises(MaskdnError, match="no true σ for noise poisson:2"):
        denoise_classical("bm3d-oracle", torch.rand(3, 16, 16), "poisson:2")


# --------------------------------------------------------------------------------------------------
# --jobs: worker processes for the built-in methods
# --------------------------------------------------------------------------------------------------


def test_jobs_give_identical_records_and_resume(data, tmp_path):
    methods = ["noisy", "nlm", str(data["model"])]
    one = run_bench(data["dirs"], methods, NOISES, tmp_path / "j1", passes=2, progress=False, reports=False, jobs=1)
    two = run_bench(data["dirs"], methods, NOISES, tmp_path / "j2", passes=2, progress=False, reports=False, jobs=2)
    assert two == one
    assert (tmp_path / "j2" / "results.json").read_text() == (tmp_path / "j1" / "results.json").read_text()
    # resume with workers: drop some built-in records, they alone are recomputed, in plan order
    stored = json.loads((tmp_path / "j2" / "results.json").read_text())
    kept = [r for r in stored if not (r["method"] == "nlm" and r["image"] == "a")]
    assert len(kept) < len(stored)
    (tmp_path / "j2" / "results.json").write_text(json.dumps(kept))
    again = run_bench(data["dirs"], methods, NOISES, tmp_path / "j2", passes=2, progress=False, reports=False, jobs=2)
    assert again == one
    with pytest.raises(MaskdnError, match="jobs must be an integer >= 1"):
        run_bench(data["dirs"], methods, NOISES, tmp_path / "j3", jobs=0, progress=False)


def test_jobs_run_cpu_models_in_workers(data, tmp_path, monkeypatch):
    """With jobs > 1 a model named by path runs in the workers: this process never runs it itself."""
    methods = [str(data["model"])]
    one = run_bench(data["dirs"], methods, NOISES, tmp_path / "j1", passes=2, progress=False, reports=False, jobs=1)

    def not_here(*args, **kwargs):
        raise AssertionError("a model ran in the main process")

    monkeypatch.setattr(bench, "_method_unit", not_here)
    two = run_bench(data["dirs"], methods, NOISES, tmp_path / "j2", passes=2, progress=False, reports=False, jobs=2)
    assert two == one and {r["passes"] for r in two} == {1, 2}


# --------------------------------------------------------------------------------------------------
# LPIPS: availability, the reason it is absent, and parity with the lpips package
# --------------------------------------------------------------------------------------------------


def test_lpips_absent_without_package(data, tmp_path, monkeypatch):
    from maskdn import perceptual

    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips → ImportError
    status = perceptual.lpips_status()
    assert not status.available
    assert status.reason == ("LPIPS not computed: the lpips package is not installed: "
                             "pip install 'maskdn[lpips]' (the lpips package with a torchvision matching torch)")
    out = tmp_path / "nolpips"
    recs = run_bench(data["dirs"][:1], ["noisy"], ["gaussian:25"], out, limit=1, progress=False)
    assert "lpips" not in recs[0]
    md = (out / "summary.md").read_text().splitlines()
    assert [line for line in md if "LPIPS" in line] == [f"- {status.reason}."]
    assert "lpips" not in (out / "summary.csv").read_text().splitlines()[0]
    # lpips=False: neither the column nor a note
    recs = run_bench(data["dirs"][:1], ["noisy"], ["gaussian:25"], tmp_path / "off", limit=1, progress=False, lpips=False)
    assert "LPIPS" not in (tmp_path / "off" / "summary.md").read_text()


def test_lpips_absent_without_backbone(tmp_path, monkeypatch):
    from maskdn import perceptual

    monkeypatch.setattr(perceptual, "_import_lpips", lambda: (object(), ""))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    status = perceptual.lpips_status()
    want = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert perceptual.hub_backbone_path() == want
    assert not status.available and status.reason == (
        f"LPIPS not computed: no AlexNet backbone weights offline; put torchvision's alexnet-owt-7be5be79.pth "
        f"at {want} or pass --lpips-backbone FILE")
    with pytest.raises(MaskdnError, match="no such LPIPS backbone weights file"):
        perceptual.lpips_status(tmp_path / "missing.pth")
    want.parent.mkdir(parents=True)
    want.write_bytes(b"")
    assert perceptual.lpips_status().available and perceptual.lpips_status().backbone == want


def test_lpips_import_error_is_one_line(monkeypatch):
    from maskdn import perceptual

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "lpips":  # anything else: None, the next finder
                raise RuntimeError("operator torchvision::nms does not exist\nmore")

    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    reason = perceptual.lpips_status().reason
    assert "does not import (RuntimeError: operator torchvision::nms does not exist)" in reason and "\n" not in reason


def _alexnet_features() -> torch.nn.Sequential:
    """torchvision's AlexNet ``features`` layout (what LPIPS-alex slices), randomly initialised."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )


def test_lpips_parity_with_package(tmp_path, monkeypatch):
    """Our wrapper (explicit file and hub cache) vs lpips.LPIPS loading the same backbone its own way.

    torchvision is replaced by a stand-in whose ``alexnet`` has torchvision's layout and, when
    pretrained, loads the hub cache file as torchvision does; the backbone is random weights we save.
    """
    import importlib.util
    import types

    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package is not installed")
    from maskdn import perceptual

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in _alexnet_features().state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)  # a full torchvision file has more than the features
    hub_file = perceptual.hub_backbone_path()
    hub_file.parent.mkdir(parents=True)
    torch.save(state, hub_file)
    explicit = tmp_path / "alexnet.pth"
    torch.save(state, explicit)

    class AlexNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = _alexnet_features()

    def alexnet(pretrained: bool = False, weights=None, **kwargs) -> AlexNet:
        net = AlexNet()
        if pretrained or weights is not None:
            net.load_state_dict({k: v for k, v in torch.load(hub_file, weights_only=True).items()
                                 if k.startswith("features.")})
        return net

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(alexnet=alexnet, AlexNet_Weights=types.SimpleNamespace(IMAGENET1K_V1="v1"))
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        _check_lpips_parity(perceptual, hub_file, explicit, tmp_path)
    finally:  # the lpips modules imported over the stand-in torchvision must not outlive the test
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            del sys.modules[name]


def _check_lpips_parity(perceptual, hub_file, explicit, tmp_path) -> None:
    import lpips

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 64, 72, generator=gen)
    b = (a + 0.1 * torch.randn(3, 64, 72, generator=gen)).clamp(0, 1)
    direct = lpips.LPIPS(net="alex", verbose=False).eval()
    with torch.no_grad():
        scale = lambda x: (torch.round(x * 255) / 127.5 - 1)[None]  # 8-bit levels → [-1, 1]
        want = float(direct(scale(a), scale(b)).item())
    ours_hub = perceptual.LpipsScorer()
    ours_file = perceptual.LpipsScorer(explicit)
    assert ours_hub.backbone == hub_file and ours_file.backbone == explicit
    assert ours_file(a, b) == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert ours_hub(a, b) == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert ours_file(a, a) == 0.0 and want > 0
    # a file that is not AlexNet weights: one line naming it
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(MaskdnError, match=r"bad.pth: not torchvision AlexNet weights \(no features.0.weight\)"):
        perceptual.LpipsScorer(bad)


# --------------------------------------------------------------------------------------------------
# The command: progress with ETA, --jobs, --limit, resume, one-line errors
# --------------------------------------------------------------------------------------------------


def test_cli_bench_progress_jobs_limit_resume_errors(data, tmp_path, capsys):
    from maskdn.cli import main

    out = tmp_path / "cli"
    args = ["bench", "--data", str(data["dirs"][0]), "--method", "noisy", "nlm", "--noise", "gaussian:25",
            "--limit", "1", "--jobs", "2", "--out", str(out), "--no-lpips"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "| nlm |" in cap.out.replace("**", "")
    assert "bench: 100%" in cap.err and "<00:00" in cap.err  # tqdm bar with elapsed<remaining (the ETA)
    records = json.loads((out / "results.json").read_text())
    assert [(r["image"], r["method"]) for r in records] == [("a", "noisy"), ("a", "nlm")]
    assert main(args) == 0  # resumed: nothing recomputed
    assert "2 resumed" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == records
    # bad inputs: one line each, exit 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('[{"dataset": ')
    for argv, msg in [
        (["bench", "--data", str(data["dirs"][0]), "--method", "noisy", "--out", str(tmp_path / "torn")],
         "results.json: cannot read benchmark records from it (Expecting value: line 1 column 14 (char 13)); "
         "cannot resume from it: move it away to start afresh"),
        (["rank", str(tmp_path / "torn")], "results.json: cannot read benchmark records from it (Expecting value"),
        (["bench", "--data", str(bad), "--method", "noisy", "--out", str(tmp_path / "o")], "x.png"),
        (["bench", "--data", str(data["dirs"][0]), "--method", "noisy", "--jobs", "0", "--out", str(tmp_path / "o")], "jobs must be"),
        (["bench", "--data", str(data["dirs"][0]), "--method", "noisy", "--lpips-backbone", str(tmp_path / "no.pth"),
          "--out", str(tmp_path / "o")], "no such LPIPS backbone weights file"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("maskdn: error: ") and msg in err[0]


def test_curves_stack_every_dataset(tmp_path):
    """One PSNR row and one SSIM row per dataset with synthetic noise, stacked in curves.png."""
    from maskdn.report import plot_curves

    recs = [{"dataset": d, "image": "a", "method": "m", "passes": 1, "noise": "gaussian", "level": lv,
             "psnr": 30 - lv / 10, "ssim": 0.8, "seed": 0} for d in ("A", "B") for lv in (15, 25)]
    one = Image.open(plot_curves(recs[:2], tmp_path / "one.png")).size
    two = Image.open(plot_curves(recs, tmp_path / "two.png")).size
    assert one[0] == two[0] and two[1] > 1.8 * one[1]


def _rec(dataset, image, method, cond, psnr):
    noise, _, level = cond.partition(":")
    return {"dataset": dataset, "image": image, "method": method, "passes": 1, "noise": noise,
            "level": float(level) if level else None, "psnr": psnr, "ssim": 0.9, "seed": 0}


def test_generalization_ranking_weighs_datasets_equally_and_leaves_out_the_training_noise():
    from maskdn.report import generalization_ranking, ranking_markdown

    recs = []
    for img in ("a", "b"):  # grid: in distribution, A wins by 10 dB; out of it, B by 1
        recs += [_rec("grid", img, "A", "gaussian:15", 40), _rec("grid", img, "B", "gaussian:15", 30),
                 _rec("grid", img, "A", "poisson:3", 25), _rec("grid", img, "B", "poisson:3", 26),
                 _rec("grid", img, "A", "speckle:0.04", 27), _rec("grid", img, "B", "speckle:0.04", 28)]
    recs += [_rec("real", f"r{i}", m, "real", p) for i in range(4) for m, p in (("A", 36.5), ("B", 36.0))]
    recs += [_rec("grid", "a", "C", "poisson:3", 50)]  # one image of one condition: not comparable
    ranking = generalization_ranking(recs)
    assert [r["method"] for r in ranking] == ["B", "A", "C"]
    b, a, c = ranking
    assert b["datasets"] == {"grid": pytest.approx(27.0), "real": pytest.approx(36.0)}
    assert b["score"] == pytest.approx((27.0 + 36.0) / 2) and a["score"] == pytest.approx((26.0 + 36.5) / 2)
    assert c["score"] is None and c["missing"] == ["grid: 2 of 2 conditions incomplete", "real: 1 of 1 conditions incomplete"]
    # with nothing left out, the in-distribution column counts too and A wins
    assert generalization_ranking(recs, exclude=())[0]["method"] == "A"
    table = ranking_markdown(ranking)
    assert "| 1 | B | 27.00 | 36.00 | 31.50 |" in table and "| – | C | – | – | – |" in table
    assert "C is not ranked: grid: 2 of 2 conditions incomplete" in table


def test_family_winners_compare_only_complete_families_and_count_conditions_won():
    from maskdn.report import family_winners, winners_markdown

    recs = []
    for img in ("a", "b"):
        recs += [_rec("K", img, "A", "gaussian:15", 40), _rec("K", img, "B", "gaussian:15", 30),  # left out
                 _rec("K", img, "A", "poisson:2", 30), _rec("K", img, "B", "poisson:2", 29),
                 _rec("K", img, "A", "poisson:3", 24), _rec("K", img, "B", "poisson:3", 27),
                 _rec("K", img, "C", "poisson:2", 35)]  # C lacks poisson:3: not compared on poisson
    recs += [_rec("K", "a", "D", c, 50) for c in ("poisson:2", "poisson:3")]  # D: one image of two, not compared
    recs += [_rec("P", "x", m, "real", v) for m, v in (("A", 36.0), ("B", 36.5))]
    w = family_winners(recs)
    assert [(r["dataset"], r["noise"]) for r in w] == [("K", "poisson"), ("P", "real")]
    k, p = w
    assert k["levels"] == ["poisson:2", "poisson:3"] and set(k["means"]) == {"A", "B"}
    assert k["best"] == "B" and k["lead"] == pytest.approx(1.0) and k["won"] == {"B": 1, "A": 1}
    assert p["best"] == "B" and p["lead"] == pytest.approx(0.5)
    # with the training noise counted, gaussian is a family of K and A wins it by 10 dB
    g = [r for r in family_winners(recs, exclude=()) if r["noise"] == "gaussian"][0]
    assert g["best"] == "A" and g["lead"] == pytest.approx(10.0)
    table = winners_markdown(w)
    assert "| poisson (2) | B (28.00; +1.00) | – |" in table and "| real (1) | – | B (36.50; +0.50) |" in table
    assert "- K, conditions won (of 2): B 1, A 1." in table  # ties: in order of the family mean


def test_rank_command_names_the_rules_choice_among_bundled_models(tmp_path, capsys):
    from maskdn.cli import main
    from maskdn.zoo import DEFAULT_MODEL

    grid, real = tmp_path / "grid", tmp_path / "real"
    grid.mkdir(), real.mkdir()
    (grid / "results.json").write_text(json.dumps(
        [_rec("K", "a", m, c, p) for m, c, p in (("masked-small", "poisson:3", 26), ("baseline-small", "poisson:3", 25),
                                                  ("noisy", "poisson:3", 30), ("masked-small", "gaussian:15", 30),
                                                  ("baseline-small", "gaussian:15", 33))]))
    (real / "results.json").write_text(json.dumps(
        [_rec("PolyU", "x", m, "real", p) for m, p in (("masked-small", 36), ("baseline-small", 36.4), ("noisy", 36))]))
    out = tmp_path / "ranking.json"
    assert main(["rank", str(grid), str(real / "results.json"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # 'noisy' scores best here but is not a bundled model: the rule chooses among those
    assert text.splitlines()[2].startswith("| 1 | noisy |")
    chosen = "masked-small"  # (26 + 36) / 2 = 31.0 against (25 + 36.4) / 2 = 30.7
    assert f"by this rule, on K, PolyU, the default model is {chosen}" in text
    assert ("(it is)" in text) == (DEFAULT_MODEL == chosen)
    doc = json.loads(out.read_text())
    assert doc["chosen"] == chosen and [r["method"] for r in doc["ranking"]] == ["noisy", "masked-small", "baseline-small"]
    assert main(["rank", str(tmp_path / "nothing")]) == 1
    assert "no benchmark results there" in capsys.readouterr().err
    assert main(["rank", str(grid), "--exclude", "bogus"]) == 1
    assert "--exclude bogus: unknown noise" in capsys.readouterr().err
    # both of K's conditions left out (written as the records name them or not): PolyU alone decides
    assert main(["rank", str(grid), str(real), "--exclude", "gaussian:15.0", "poisson:3"]) == 0
    assert "| 1 | baseline-small | 36.40 | 36.40 |" in capsys.readouterr().out
    # a bundled model measured on part of the grid might be the best: the rule waits for it
    (tmp_path / "part.json").write_text(json.dumps([_rec("K", "a", "idf-g15", "poisson:3", 31)]))
    assert main(["rank", str(grid), str(real / "results.json"), str(tmp_path / "part.json")]) == 0
    text = capsys.readouterr().out
    assert "idf-g15 lack measurements (see above): the rule picks none until they are complete" in text
    assert "default model is" not in text


def test_the_default_model_is_the_rules_choice_on_the_committed_records():
    """maskdn's default is what `maskdn rank` picks from the README's benchmark records (docs/bench),
    once every bundled model in them is complete."""
    from pathlib import Path

    from maskdn.generalization import load_results
    from maskdn.report import generalization_ranking, rule_choice
    from maskdn.zoo import DEFAULT_MODEL, names

    from maskdn.report import summarize

    bench = Path(__file__).resolve().parents[1] / "docs" / "bench"
    records = load_results(bench / "results-grid.json.gz") + load_results(bench / "results-polyu.json.gz")
    images = {}  # the README's runs: the first 16 images of Kodak24 and CBSD68, all of PolyU
    for row in summarize(r for r in records if r["method"] in names()):
        images[row["dataset"]] = min(images.get(row["dataset"], row["images"]), row["images"])
    if images != {"Kodak24": 16, "CBSD68": 16, "PolyU": 100}:
        pytest.skip(f"the committed benchmark records are incomplete (least images per bundled model: {images})")
    chosen, why = rule_choice(generalization_ranking(records), names())
    assert chosen == DEFAULT_MODEL, why
