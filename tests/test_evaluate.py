"""Scoring: clean folders and real-noise pairs, reproducible noise, recording scores in weights."""

from __future__ import annotations

import numpy as np
import pytest

from maskdn.cli import main
from maskdn.errors import MaskdnError
from maskdn.evaluate import evaluate, load_dataset, scores_table
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
    from maskdn.bench import model_method, run_bench

    clean, pairs = folders
    got = evaluate(tiny_masked_model, [clean, pairs], ["gaussian:15.0"], passes=2, progress=False)
    assert set(got["Clean"]) == {"gaussian:15.0"}
    method = model_method(tiny_masked_model, "m", [2])
    records = run_bench([clean, pairs], [method], ["gaussian:15"], tmp_path / "b", progress=False, reports=False)
    for name in ("Clean", "Pairs"):
        want = round(float(np.mean([r["psnr"] for r in records if r["dataset"] == name])), 2)
        assert list(got[name].values()) == [want]
