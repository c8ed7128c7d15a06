"""Scoring: clean folders and real-noise pairs, reproducible noise, recording scores in weights."""

from __future__ import annotations

import numpy as np
import pytest

from maskdn.cli import main
from maskdn.errors import MaskdnError
from maskdn.datasets import load_dataset
from maskdn.evaluate import evaluate, scores_table
from maskdn.io import write_image
from maskdn.metrics import psnr
from maskdn.noise import noise_seed
from maskdn.weights import read_metadata, save_model


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    clean, pairs = tmp_path / "Clean", tmp_path / "Pairs"
    clean.mkdir(), pairs.mkdir()
    for i in range(2):
        write_image(clean / f"c{i}.png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
        base = rng.integers(20, 230, (16, 16, 3), dtype=np.uint8)
        write_image(pairs / f"cam_{i}_mean.png", base)
        write_image(pairs / f"cam_{i}_real.png", (base + rng.integers(-10, 10, base.shape)).astype(np.uint8))
    return clean, pairs


def test_dataset_kinds(folders):
    clean, pairs = folders
    assert [s.noisy is None for s in load_dataset(clean)] == [True, True]
    real = load_dataset(pairs)
    assert [s.name for s in real] == ["cam_0", "cam_1"] and all(s.noisy is not None for s in real)
    (pairs / "cam_1_mean.png").unlink()
    with pytest.raises(MaskdnError, match="cam_1_real has no matching cam_1_mean"):
        load_dataset(pairs)


def test_evaluate_scores_are_reproducible(folders, tiny_masked_model):
    clean, pairs = folders
    a = evaluate(tiny_masked_model, [clean, pairs], ["gaussian:15", "poisson:2"], progress=False)
    b = evaluate(tiny_masked_model, [clean, pairs], ["gaussian:15", "poisson:2"], progress=False)
    assert a == b
    assert set(a) == {"Clean", "Pairs"} and set(a["Clean"]) == {"gaussian:15", "poisson:2"} and set(a["Pairs"]) == {"real"}
    assert "| Clean |" in scores_table(a)


def test_no_model_scores_the_noisy_input(folders):
    """model=None (the CLI's --model noisy) must score exactly the noisy image's PSNR."""
    from maskdn.noise import apply_noise

    clean, pairs = folders
    samples = load_dataset(clean)
    expected = np.mean([psnr(apply_noise(s.clean, "gaussian:25", seed=noise_seed(0, s.name, "gaussian:25")), s.clean) for s in samples])
    real = np.mean([psnr(s.noisy, s.clean) for s in load_dataset(pairs)])
    got = evaluate(None, [clean, pairs], ["gaussian:25"], progress=False)
    assert got["Clean"]["gaussian:25"] == round(float(expected), 2)
    assert got["Pairs"]["real"] == round(float(real), 2)


def test_noise_seed_depends_on_image_and_noise():
    assert noise_seed(0, "a", "gaussian:15") == noise_seed(0, "a", "gaussian:15")
    assert len({noise_seed(0, "a", "g"), noise_seed(0, "b", "g"), noise_seed(1, "a", "g"), noise_seed(0, "a", "h")}) == 4


def test_cli_evaluate_records_scores(folders, tmp_path, tiny_model, capsys):
    clean, _ = folders
    path = save_model(tiny_model, tmp_path / "m.safetensors", training={"preset": "tiny"})
    assert main(["evaluate", "--model", str(path), "--data", str(clean), "--noise", "gaussian:15", "--record"]) == 0
    rec = read_metadata(path)["training"]
    assert rec["preset"] == "tiny" and set(rec["scores"]["Clean"]) == {"gaussian:15"}
    assert rec["scores_protocol"]["passes"] == 1
    assert main(["evaluate", "--model", str(path), "--data", str(clean), "--noise", "blur:1"]) == 1
    assert "blur:1: unknown noise" in capsys.readouterr().err


def test_evaluate_is_the_bench_loop(folders, tiny_masked_model, tmp_path):
    """evaluate's scores are the means of run_bench's records (one loop), keyed as the noises were written."""
    from maskdn.generalization import model_method, run_bench

    clean, pairs = folders
    got = evaluate(tiny_masked_model, [clean, pairs], ["gaussian:15.0"], passes=2, progress=False)
    assert set(got["Clean"]) == {"gaussian:15.0"}
    method = model_method(tiny_masked_model, "m", [2])
    records = run_bench([clean, pairs], [method], ["gaussian:15"], tmp_path / "b", progress=False, reports=False)
    for name in ("Clean", "Pairs"):
        want = round(float(np.mean([r["psnr"] for r in records if r["dataset"] == name])), 2)
        assert list(got[name].values()) == [want]


def _validation_reference(model, folder, noise, seed, crop=0, limit=0, holdout=0, device=None):
    """The training validation as it was written before the evaluator took it over (train/data.py
    ``load_validation_set`` + ``_center_crop``, train/loop.py ``validate``), kept here as the reference."""
    import torch

    from maskdn.inference import denoise_tensor
    from maskdn.io import read_image, to_float_rgb
    from maskdn.noise import apply_noise
    from maskdn.train.data import split_holdout

    device = device or torch.device("cpu")

    def center_crop(x, size):
        if not size:
            return x
        _, H, W = x.shape
        top, left = max(0, (H - size) // 2), max(0, (W - size) // 2)
        return x[:, top : top + size, left : left + size]

    if holdout:
        held = split_holdout(folder, holdout)[1][: limit or None]
        samples = [(p.stem, to_float_rgb(read_image(p))[0], None) for p in held]
    else:
        samples = [(s.name, s.clean, s.noisy) for s in load_dataset(folder, limit or None)]
    pairs = []
    for name, clean, real in samples:
        noisy = real if real is not None else apply_noise(clean, noise, seed=noise_seed(seed, name, noise))
        pairs.append((center_crop(noisy, crop), center_crop(clean, crop)))
    scores = []
    with torch.no_grad():
        for noisy, clean in pairs:
            gen = torch.Generator(device).manual_seed(seed)
            out = denoise_tensor(model, noisy[None].to(device), generator=gen)[0]
            scores.append(psnr(out.float().cpu(), clean))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("noise, seed, crop, limit, holdout", [
    ("poisson:2", 0, 16, 0, 0),      # crop with odd margins on 24×20 images
    ("gaussian:15", 3, 0, 1, 0),     # whole images, first one only
    ("gaussian:15", 5, 32, 0, 0),    # a crop larger than the images: whole images
    ("poisson:2", 7, 12, 0, 1),      # the last image held out of training
])
def test_training_validation_is_the_evaluator_unchanged(folders, tiny_masked_model, noise, seed, crop, limit, holdout):
    """Validation through the evaluator (load_validation_set + validate, and run_bench with ``crop``) gives
    exactly, to the float, the PSNR of the protocol a training run logs: noise on the whole image, then
    the center crop, one pass per image under a generator freshly seeded with the run's seed."""
    import torch

    from maskdn.datasets import Sample
    from maskdn.generalization import model_method, run_bench
    from maskdn.train.data import load_validation_set, split_holdout
    from maskdn.train.loop import validate

    clean, _ = folders
    want = _validation_reference(tiny_masked_model, clean, noise, seed, crop, limit, holdout)
    pairs = load_validation_set(clean, noise, seed, crop=crop, limit=limit, holdout=holdout)
    assert validate(tiny_masked_model, pairs, seed, torch.device("cpu")) == want
    if holdout:  # the held-out images as an in-memory dataset
        from maskdn.datasets import load_image

        data = [("held", [Sample(p.stem, load_image(p)) for p in split_holdout(clean, holdout)[1]])]
    else:
        data = [clean]
    records = run_bench(data, [model_method(tiny_masked_model, "m", [1])], [noise], None, seed=seed, limit=limit or None,
                        crop=crop, progress=False, lpips=False, with_ssim=False)
    assert sum(r["psnr"] for r in records) / len(records) == want
    assert all(r.get("crop") == (crop or None) for r in records)


def test_validation_on_real_pairs_is_unchanged(folders, tiny_masked_model):
    import torch

    from maskdn.train.data import load_validation_set
    from maskdn.train.loop import validate

    _, pairs = folders
    want = _validation_reference(tiny_masked_model, pairs, "gaussian:15", 1, crop=8)
    assert validate(tiny_masked_model, load_validation_set(pairs, "gaussian:15", 1, crop=8), 1, torch.device("cpu")) == want


def test_run_bench_bf16_and_crop_are_part_of_the_record(folders, tiny_model, tmp_path):
    from maskdn.generalization import record_key, run_bench

    clean, _ = folders
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    plain = run_bench([clean], [str(path)], ["gaussian:15"], tmp_path / "b", progress=False, reports=False,
                      lpips=False, with_ssim=False)
    both = run_bench([clean], [str(path)], ["gaussian:15"], tmp_path / "b", progress=False, reports=False,
                     lpips=False, with_ssim=False, bf16=True, crop=16)
    assert all("crop" not in r and "bf16" not in r for r in plain)
    new = [r for r in both if r.get("bf16")]
    assert len(new) == len(plain) and all(r["crop"] == 16 for r in new)  # not resumed from the plain records
    assert {record_key(r) for r in new}.isdisjoint(record_key(r) for r in plain)


@pytest.fixture
def paired(tmp_path):
    """Pairs in a layout of their own: DS/noisy/<name>.png and DS/gt/<name>.png (one of them a TIFF)."""
    rng = np.random.default_rng(3)
    noisy, gt = tmp_path / "DS" / "noisy", tmp_path / "DS" / "gt"
    noisy.mkdir(parents=True), gt.mkdir()
    for name in ("0001", "0002", "0003"):
        base = rng.integers(20, 230, (18, 22, 3), dtype=np.uint8)
        write_image(gt / f"{name}.{'tif' if name == '0002' else 'png'}", base)
        write_image(noisy / f"{name}.png", np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8))
    return noisy, gt


def test_noisy_and_clean_folders_scored_by_file_name(paired, tmp_path, capsys):
    """--noisy/--clean: PSNR and SSIM of each noisy photo against the clean one of its name, as CSV and JSON."""
    import json

    from maskdn.datasets import load_image
    from maskdn.metrics import ssim

    noisy, gt = paired
    names = ("0001", "0002", "0003")
    want_psnr = np.mean([psnr(load_image(noisy / f"{n}.png"), load_image(next(gt.glob(f"{n}.*")))) for n in names])
    want_ssim = np.mean([ssim(load_image(noisy / f"{n}.png"), load_image(next(gt.glob(f"{n}.*")))) for n in names])
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--model", "noisy", "--noisy", str(noisy), "--clean", str(gt), "-o", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows == [{"dataset": "DS", "condition": "real", "images": 3, "psnr": round(float(want_psnr), 2),
                     "ssim": round(float(want_ssim), 4)}]
    assert f"| DS | {want_psnr:.2f} / {want_ssim:.4f} |" in capsys.readouterr().out
    csv_out = tmp_path / "scores.csv"
    assert main(["evaluate", "--model", "noisy", "--noisy", str(noisy), "--clean", str(gt), "-o", str(csv_out)]) == 0
    assert csv_out.read_text().splitlines() == ["dataset,condition,images,psnr,ssim",
                                                f"DS,real,3,{rows[0]['psnr']},{rows[0]['ssim']}"]


def test_bench_takes_noisy_and_clean_folders(paired, tmp_path, capsys):
    import json

    noisy, gt = paired
    out = tmp_path / "b"
    assert main(["bench", "--noisy", str(noisy), "--clean", str(gt), "--method", "noisy", "-o", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert sorted(r["image"] for r in records) == ["0001", "0002", "0003"]
    assert {(r["dataset"], r["noise"]) for r in records} == {("DS", "real")}


@pytest.mark.parametrize("change, message", [
    (lambda n, c: (n / "0003.png").unlink(), "0003.tif: no noisy image of that name"),
    (lambda n, c: (c / "0001.png").unlink(), "0001.png: no clean image of that name"),
    (lambda n, c: write_image(c / "0001.png", np.zeros((8, 8, 3), np.uint8)), "22x18 pixels but its clean image"),
    (lambda n, c: write_image(n / "0001.tif", np.zeros((8, 8, 3), np.uint8)), "two images named 0001"),
])
def test_unmatched_pairs_are_one_line(paired, capsys, change, message):
    noisy, gt = paired
    if "0003.tif" in message:
        (gt / "0003.png").rename(gt / "0003.tif")
    change(noisy, gt)
    assert main(["evaluate", "--model", "noisy", "--noisy", str(noisy), "--clean", str(gt)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err


def test_evaluate_output_must_be_csv_or_json_before_any_work(folders, tmp_path, capsys):
    clean, _ = folders
    assert main(["evaluate", "--model", "noisy", "--data", str(clean), "-o", str(tmp_path / "s.txt")]) == 1
    err = capsys.readouterr().err
    assert "s.txt: write scores as .csv or .json" in err and "%|" not in err  # no progress bar: no work done


def test_record_never_writes_into_the_installed_package(folders, tmp_path, capsys):
    """--record on a bundled model is refused with the way out; --record COPY writes the copy only."""
    from maskdn.zoo import DEFAULT_MODEL, resolve

    clean, _ = folders
    bundled = resolve(DEFAULT_MODEL)
    before = bundled.read_bytes()
    args = ["evaluate", "--model", DEFAULT_MODEL, "--data", str(clean), "--noise", "gaussian:15", "--limit", "1"]
    assert main([*args, "--record"]) == 1
    err = capsys.readouterr().err
    assert f"{DEFAULT_MODEL} is a bundled model" in err and f"--record {DEFAULT_MODEL}.safetensors" in err
    copy = tmp_path / "mine.safetensors"
    assert main([*args, "--record", str(copy)]) == 0
    assert bundled.read_bytes() == before
    rec = read_metadata(copy)["training"]
    assert set(rec["scores"]["Clean"]) == {"gaussian:15"} and rec["scores_protocol"]["limit"] == 1
    assert read_metadata(copy)["config"] == read_metadata(bundled)["config"]


def test_evaluate_reuses_matching_bench_records_and_computes_only_the_rest(folders, tmp_path, capsys):
    """--reuse: records of an earlier bench run of the same weights are taken, not recomputed; the scores
    are those of a fresh evaluation; records of other settings (a tile) are never taken."""
    import json

    import torch

    from maskdn.evaluate import evaluate_rows
    from maskdn.model import MaskedSwinIR, preset
    from maskdn.weights import load_model

    clean, pairs = folders
    torch.manual_seed(0)
    path = save_model(MaskedSwinIR(preset("tiny")), tmp_path / "m.safetensors")  # stochastic: seeds must match too
    bench = tmp_path / "bench"
    assert main(["bench", "--data", str(clean), str(pairs), "--model", str(path), "--noise", "gaussian:15",
                 "--passes", "1", "--limit", "1", "-o", str(bench)]) == 0
    records = json.loads((bench / "results.json").read_text())
    assert {r["image"] for r in records if r["method"] == "m"} == {"c0", "cam_0"}
    decoy = {**next(r for r in records if r["image"] == "c0" and r["method"] == "m"), "tile": 8, "psnr": 99.0}

    model = load_model(path)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    fresh = evaluate_rows(model, [clean, pairs], ["gaussian:15"], progress=False)
    n_fresh, calls[:] = len(calls), []
    reused = evaluate_rows(model, [clean, pairs], ["gaussian:15"], progress=False, reuse=records + [decoy],
                           reuse_method="m")
    assert reused == fresh and n_fresh == 4 and len(calls) == 2  # c1 and cam_1 only
    with pytest.raises(MaskdnError, match="no tile, no bf16"):
        evaluate_rows(model, [clean], ["gaussian:15"], progress=False, reuse=records, reuse_method="m", tile=16)

    capsys.readouterr()
    args = ["evaluate", "--model", str(path), "--data", str(clean), str(pairs), "--noise", "gaussian:15"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert main(args + ["--reuse", str(bench)]) == 0 and capsys.readouterr().out == table
    assert main(args + ["--reuse", str(bench), "--attn-mask-ratio", "0.5"]) == 1
    assert "do not say which attention-mask ratio" in capsys.readouterr().err
    assert main(args + ["--reuse", str(tmp_path / "none")]) == 1
    assert "no benchmark results there" in capsys.readouterr().err
