"""Uncertainty maps: the per-pixel std of a masked model's passes, through every layer of inference."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from maskdn import denoise
from maskdn.errors import MaskdnError
from maskdn.inference import denoise_files, denoise_tensor, model_pass
from maskdn.model import MaskedSwinIR, preset
from maskdn.uncertainty import channel_rms, check_uncertainty, error_agreement, std_paths


@pytest.fixture(scope="module")
def masked():
    """A tiny masked model whose attention matters: its linear weights scaled up from the small init."""
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.75, attn_mask_at_eval=True)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def deterministic():
    torch.manual_seed(0)
    return MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)).eval()


def _passes(model, x, k, seed):
    """The k passes drawn one after another from one seeded generator: what denoise_tensor averages."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.stack([model_pass(model, x, g) for _ in range(k)])


def test_std_of_the_passes(masked):
    x = torch.rand(2, 3, 20, 27, generator=torch.Generator().manual_seed(1))
    ys = _passes(masked, x, 5, seed=3)
    mean, std = denoise_tensor(masked, x, passes=5, generator=torch.Generator().manual_seed(3), uncertainty=True)
    torch.testing.assert_close(mean, ys.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, ys.std(0, unbiased=False), atol=1e-5, rtol=1e-4)
    assert float(std.mean()) > 1e-3  # the passes do differ
    plain = denoise_tensor(masked, x, passes=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, mean)  # asking for the map does not change the image


def test_self_ensemble_spans_the_transforms(masked):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mean, std = denoise_tensor(masked, x, passes=2, self_ensemble=True, generator=torch.Generator().manual_seed(0),
                               uncertainty=True)
    g = torch.Generator().manual_seed(0)
    from maskdn.geometry import dihedral, dihedral_inverse

    with torch.no_grad():
        ys = torch.stack([dihedral_inverse(model_pass(masked, dihedral(x, k), g), k) for k in range(8) for _ in range(2)])
    torch.testing.assert_close(std, ys.std(0, unbiased=False), atol=1e-5, rtol=1e-4)


def test_tiles_one_tile_is_untiled_and_several_blend(masked):
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    whole = denoise_tensor(masked, x, passes=3, generator=torch.Generator().manual_seed(0), uncertainty=True)
    one = denoise_tensor(masked, x, passes=3, tile=64, generator=torch.Generator().manual_seed(0), uncertainty=True)
    assert torch.equal(whole[1], one[1])
    mean, std = denoise_tensor(masked, x, passes=3, tile=16, tile_overlap=4, generator=torch.Generator().manual_seed(0),
                               uncertainty=True)
    assert mean.shape == std.shape == x.shape and bool((std >= 0).all())
    # a pixel inside one tile only has that tile's std: the top-left corner is the first tile's own
    ys = _passes(masked, x[:, :, :16, :16], 3, seed=0)
    torch.testing.assert_close(std[:, :, :4, :4], ys.std(0, unbiased=False)[:, :, :4, :4], atol=1e-5, rtol=1e-4)


def test_denoise_returns_a_map_per_input_kind(masked):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)
    out, std = denoise(u8, masked, passes=3, uncertainty=True)
    assert out.dtype == np.uint8 and out.shape == u8.shape
    assert std.dtype == np.float32 and std.shape == (18, 22) and float(std.min()) >= 0
    assert np.array_equal(out, denoise(u8, masked, passes=3))
    gray, gstd = denoise(u8[..., 0], masked, passes=3, uncertainty=True)
    assert gray.shape == (18, 22) and gstd.shape == (18, 22)
    pil, pstd = denoise(Image.fromarray(u8), masked, passes=3, uncertainty=True)
    assert pil.mode == "RGB" and np.array_equal(pstd, std)
    t = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    tout, tstd = denoise(t, masked, passes=3, uncertainty=True)
    assert tout.shape == t.shape and tstd.shape == (18, 22) and tstd.dtype == torch.float32
    tb, tbstd = denoise(t[None], masked, passes=3, uncertainty=True)
    assert tbstd.shape == (1, 18, 22)


def test_channel_rms():
    std = torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(channel_rms(std), torch.full((2, 2, 2), (25 / 3) ** 0.5))


def test_refused_where_there_is_no_spread(masked, deterministic):
    with pytest.raises(MaskdnError, match="deterministic"):
        check_uncertainty(deterministic, 8)
    with pytest.raises(MaskdnError, match=r"needs 2 or more passes \(passes=, --passes"):
        check_uncertainty(masked, 1)
    with pytest.raises(MaskdnError, match="deterministic"):
        denoise(np.zeros((8, 8, 3), np.uint8), deterministic, passes=4, uncertainty=True)


def test_files_write_the_map_beside_the_output(masked, tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "in" / "photo.png"
    src.parent.mkdir()
    a = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(a).save(src)
    out = tmp_path / "out" / "photo_dn.png"
    assert denoise_files([src], out, masked, progress=False, passes=3, uncertainty=True) == []
    tif, png = std_paths(out)
    assert (tif.name, png.name) == ("photo_dn_std.tif", "photo_dn_std.png")
    values = tifffile.imread(tif)
    _, std = denoise(a, masked, passes=3, uncertainty=True)
    assert values.dtype == np.float32 and np.array_equal(values, std)
    with Image.open(png) as fig:
        assert fig.mode == "RGB" and fig.width > 100
    with pytest.raises(MaskdnError, match=r"needs 2 or more passes \(passes=, --passes"):
        denoise_files([src], tmp_path / "other.png", masked, progress=False, passes=1, uncertainty=True)
    assert not (tmp_path / "other.png").exists()


def test_error_agreement_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    s = rng.random((30, 40))
    e = s + 0.5 * rng.random((30, 40))
    e[0, :5] = e[0, 5]  # ties
    got = error_agreement(s, e)
    assert got["pearson"] == pytest.approx(stats.pearsonr(s.ravel(), e.ravel())[0], abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(s.ravel(), e.ravel())[0], abs=1e-12)
    # the 10% largest std hold all the error: ratio 10
    s2 = np.arange(100.0).reshape(10, 10)
    e2 = (s2 >= 90).astype(float)
    assert error_agreement(s2, e2)["top_error_ratio"] == pytest.approx(10.0)
    with pytest.raises(MaskdnError, match="differ in shape"):
        error_agreement(s, e[:, :3])


def test_command_line(masked, deterministic, tmp_path, capsys):
    from maskdn.cli import main
    from maskdn.weights import save_model

    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    det, msk = save_model(deterministic, tmp_path / "det.safetensors"), save_model(masked, tmp_path / "msk.safetensors")
    assert main(["denoise", str(src), "-o", str(tmp_path / "o.png"), "--model", str(det), "--passes", "4",
                 "--uncertainty"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "deterministic" in err[0] and not (tmp_path / "o.png").exists()
    assert main(["denoise", str(src), "-o", str(tmp_path / "o.png"), "--model", str(msk), "--passes", "3",
                 "--uncertainty"]) == 0
    assert (tmp_path / "o.png").exists() and tifffile.imread(tmp_path / "o_std.tif").shape == (16, 16)
