"""Feature analysis: CKA and histogram distances on known inputs, and ``maskdn analyze`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskdn.analysis import (
    Histogram,
    _CrossMoments,
    analyze,
    histogram_edges,
    jensen_shannon,
    linear_cka,
    wasserstein1,
)
from maskdn.cli import main
from maskdn.errors import MaskdnError
from maskdn.io import write_image
from maskdn.model import MaskedSwinIR, preset
from maskdn.weights import save_model

# --------------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------------


def _random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_cka_identical_is_one():
    x = np.random.default_rng(0).normal(size=(400, 16))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(torch.from_numpy(x).float(), torch.from_numpy(x).float()) == pytest.approx(1.0, abs=1e-6)


def test_cka_invariant_to_orthogonal_transform_isotropic_scale_and_offset():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))  # correlated columns
    y = x + 3.0 * rng.normal(size=x.shape)
    base = linear_cka(x, y)
    assert 0.3 < base < 0.99
    q = _random_orthogonal(12, rng)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 7.5 * y @ q + 3.0) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, x @ q * 0.01) == pytest.approx(1.0, abs=1e-10)


def test_cka_not_invariant_to_anisotropic_scaling():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 6))
    assert linear_cka(x, x * np.array([1, 1, 1, 1, 1, 20.0])) < 0.9


def test_cka_of_independent_features_is_small():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    assert linear_cka(x, y) < 0.05


def test_cka_streamed_equals_batch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 5)) + 2.0
    y = x @ rng.normal(size=(5, 5)) + rng.normal(size=(600, 5))
    acc = _CrossMoments(5, 5)
    for part in np.array_split(np.arange(600), 7):
        acc.update(x[part], y[part])
    assert acc.cka() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_cka_bad_shapes():
    with pytest.raises(MaskdnError, match="same n"):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))


# --------------------------------------------------------------------------------------------------
# Histograms and their distances
# --------------------------------------------------------------------------------------------------


def test_histogram_counts_and_outlier_bins():
    h = Histogram([0.0, 1.0, 2.0]).add(np.array([-5.0, 0.5, 1.0, 1.5, 2.0, 9.0, np.nan]))
    assert h.counts.tolist() == [1, 1, 2, 2]
    assert h.support()[0] == -5.0 and h.support()[-1] == 5.5  # outliers sit at their own means
    assert h.moments()["outliers"] == pytest.approx(3 / 6)


def test_histogram_moments_of_gaussian():
    v = np.random.default_rng(5).normal(3.0, 2.0, size=200_000)
    h = Histogram(histogram_edges(v, 50), center=3.0).add(v)
    m = h.moments()
    assert m["mean"] == pytest.approx(3.0, abs=0.02)
    assert m["std"] == pytest.approx(2.0, rel=0.01)
    assert abs(m["kurtosis"]) < 0.05
    heavy = Histogram(h.edges, center=3.0).add(np.random.default_rng(6).standard_t(3, size=200_000) + 3.0)
    assert heavy.moments()["kurtosis"] > 2


def test_histogram_edges_from_robust_range():
    v = np.concatenate([np.linspace(-1, 1, 10_000), [1e6]])
    e = histogram_edges(v, bins=10, q=0.001, margin=0.25)
    assert len(e) == 11
    assert -1.6 < e[0] < -1.4 and 1.4 < e[-1] < 1.6  # the outlier does not stretch the range
    e0 = histogram_edges(np.full(100, 2.0), bins=4)  # degenerate range
    assert e0[0] < 2.0 < e0[-1]


def test_distances_zero_for_identical_and_grow_with_shift():
    rng = np.random.default_rng(7)
    v = rng.normal(size=50_000)
    edges = histogram_edges(v, 100)
    ref = Histogram(edges).add(v)
    same = Histogram(edges).add(v.copy())
    assert wasserstein1(ref, same) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(ref, same) == pytest.approx(0.0, abs=1e-12)
    w1s, jss = [], []
    for s in (0.1, 0.3, 1.0, 3.0):
        shifted = Histogram(edges).add(v + s)
        w1s.append(wasserstein1(shifted, ref))
        jss.append(jensen_shannon(shifted, ref))
        assert wasserstein1(shifted, ref) == pytest.approx(wasserstein1(ref, shifted))  # symmetric
    assert np.all(np.diff(w1s) > 0) and np.all(np.diff(jss) > 0)
    assert w1s[0] == pytest.approx(0.1, rel=0.15) and w1s[2] == pytest.approx(1.0, rel=0.05)
    # a shift far beyond the range still counts in full, through the outlier bins' means
    assert wasserstein1(Histogram(edges).add(v + 100.0), ref) == pytest.approx(100.0, rel=0.02)
    assert jensen_shannon(Histogram(edges).add(v + 100.0), ref) == pytest.approx(1.0, abs=1e-3)


def test_distances_need_shared_bins():
    with pytest.raises(MaskdnError, match="share"):
        wasserstein1(Histogram([0, 1, 2]).add([0.5]), Histogram([0, 1, 3]).add([0.5]))


# --------------------------------------------------------------------------------------------------
# The analysis and the command
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:40]
    for i in range(3):  # smooth images with a little texture, so noises differ from each other
        base = 0.5 + 0.3 * np.sin(xx / (4 + i))[..., None] * np.cos(yy / 5)[..., None] * np.array([1, 0.7, 0.4])
        img = np.clip(base + 0.05 * rng.normal(size=(36, 40, 3)), 0, 1)
        write_image(d / f"im{i}.png", np.round(img * 255).astype(np.uint8))
    return d


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    plain = save_model(MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)), tmp_path / "plain.safetensors")
    torch.manual_seed(1)
    run = tmp_path / "run-masked"
    run.mkdir()
    masked = save_model(MaskedSwinIR(preset("tiny")), run / "model.safetensors")
    return plain, masked


def test_analyze_command_end_to_end(tmp_path, images, weights, capsys):
    out = tmp_path / "out"
    rc = main(["analyze", "--model", str(weights[0]), "--model", str(weights[1]), "--data", str(images),
               "--noise", "poisson:2", "speckle:0.03", "--limit", "2", "--crop", "24", "--tokens", "64",
               "--bins", "20", "--out", str(out)])
    assert rc == 0
    assert "Feature analysis" in capsys.readouterr().out
    for name in ("analysis.json", "summary.md", "cka.png", "histograms_plain.png", "histograms_run-masked.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    result = json.loads((out / "analysis.json").read_text())
    assert result["reference"] == "gaussian:15"
    assert result["noises"] == ["gaussian:15", "poisson:2", "speckle:0.03"]  # the reference always first
    assert result["layers"] == ["embed", "group0", "group1", "body"]
    assert result["images"] == ["im0", "im1"] and result["crop"] == 24
    assert list(result["models"]) == ["plain", "run-masked"]
    assert result["models"]["run-masked"]["masks_attention"] is True
    for rec in result["models"].values():
        for layer in result["layers"]:
            lr = rec["layers"][layer]
            assert lr["edges"][2] == 20
            ref = lr["noises"]["gaussian:15"]
            assert ref["w1"] == 0 and ref["js"] == 0 and ref["cka"] == pytest.approx(1.0)
            for cond in ("poisson:2", "speckle:0.03"):
                r = lr["noises"][cond]
                assert len(r["counts"]) == 22 and sum(r["counts"]) == 2 * 64 * 24  # tokens × images × channels
                assert r["w1"] > 0 and 0 < r["js"] <= 1 and 0 < r["cka"] < 1
    summary = (out / "summary.md").read_text()
    assert "| plain | body |" in summary and "| run-masked | embed |" in summary and "speckle:0.03" in summary


def test_analyze_is_reproducible_and_pairs_the_same_tokens(images, tiny_masked_model):
    kw = {"noises": ["gaussian:15"], "out_dir": None, "crop": 24, "tokens": 50, "bins": 10, "progress": False, "limit": 2}
    a = analyze([("m", tiny_masked_model)], images, **kw)
    b = analyze([("m", tiny_masked_model)], images, **kw)
    assert a == b
    # the reference against itself, same tokens and mask draws: exactly the same features
    lr = a["models"]["m"]["layers"]["group1"]["noises"]["gaussian:15"]
    assert lr["cka"] == pytest.approx(1.0) and lr["w1"] == 0
    c = analyze([("m", tiny_masked_model)], images, **{**kw, "seed": 1})
    assert c["models"]["m"]["layers"]["group1"]["noises"]["gaussian:15"]["counts"] != lr["counts"]


def test_nearly_equal_noises_give_cka_near_one(images):
    """Same token positions and same attention-mask draws under every noise: only the noise differs.

    The weights are scaled up so that the attention masks matter: with a fresh mask draw per noise the
    groups' CKA falls to about 0.3, and with other token positions per noise to about 0.
    """
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 2:
                p.mul_(30.0)
    r = analyze([("m", model)], images, ["gaussian:2"], None, reference="gaussian:1", crop=32,
                tokens=128, bins=20, progress=False)
    assert r["noises"] == ["gaussian:1", "gaussian:2"]
    for layer in r["layers"]:
        assert r["models"]["m"]["layers"][layer]["noises"]["gaussian:2"]["cka"] > 0.97, layer
        assert r["models"]["m"]["layers"][layer]["noises"]["gaussian:2"]["js"] < 0.05, layer


def test_analyze_layer_choice(images, tiny_model):
    r = analyze([("t", tiny_model)], images, ["gaussian:50"], None, layers=["body", "embed"], crop=16,
                tokens=16, bins=8, progress=False, limit=1)
    assert r["layers"] == ["body", "embed"] and list(r["models"]["t"]["layers"]) == ["body", "embed"]


def test_unknown_layer_is_a_one_line_error(tmp_path, images, weights, capsys):
    rc = main(["analyze", "--model", str(weights[0]), "--data", str(images), "--layer", "group7",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err == "maskdn: error: unknown layer 'group7' (valid: embed, group0, group1, body)"
    assert not (tmp_path / "o").exists()


def test_bad_folder_is_a_one_line_error(tmp_path, weights, capsys):
    rc = main(["analyze", "--model", str(weights[0]), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("maskdn: error: ") and "nope" in err[0] and "no such" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["analyze", "--model", str(weights[0]), "--data", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no images" in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--noise", "gaussian"], "level must be"),
        (["--tokens", "1"], "tokens must be an integer >= 2"),
        (["--limit", "0"], "limit must be"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, images, weights, capsys, args, message):
    rc = main(["analyze", "--model", str(weights[0]), "--data", str(images), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and message in err[0]
