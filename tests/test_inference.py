"""Behaviour of maskdn.inference: type round trips, tiles, passes, self-ensemble, the file batch.

Tiny random-weight models only (fixtures in conftest.py) and small images, to stay fast on a shared CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskdn.errors import MaskdnError
from maskdn.inference import BORDER_CONTEXT, denoise, denoise_files, denoise_tensor, model_pass

H, W = 12, 10  # small, not a multiple of the window (8): exercises the model's pad-and-crop


def _random(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Round trips of every input type
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(H, W), (H, W, 1), (H, W, 3), (H, W, 4)], ids=["gray", "gray1", "rgb", "rgba"])
def test_numpy_round_trip(tiny_model, dtype, shape):
    a = _random(shape, dtype)
    out = denoise(a, tiny_model)
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype and out.shape == shape
    assert np.isfinite(out.astype(np.float64)).all()
    if len(shape) == 3 and shape[2] == 4:
        np.testing.assert_array_equal(out[..., 3], a[..., 3])  # alpha passed through unchanged
    if dtype != np.float32:
        assert not np.array_equal(out, a)  # it did something


def test_float64_array_keeps_dtype(tiny_model):
    a = _random((H, W, 3), np.float32).astype(np.float64)
    out = denoise(a, tiny_model)
    assert out.dtype == np.float64 and out.shape == a.shape


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_pil_round_trip(tiny_model, mode):
    if mode == "I;16":
        img = Image.fromarray(_random((H, W), np.uint16))
    else:
        channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
        img = Image.fromarray(_random((H, W, *channels), np.uint8), mode=mode)
    assert img.mode == mode
    out = denoise(img, tiny_model)
    assert isinstance(out, Image.Image)
    assert out.mode == mode and out.size == img.size
    if mode == "RGBA":
        np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(img)[..., 3])


def test_torch_round_trip_matches_model(tiny_model):
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model_pass(tiny_model, x)
    batched = denoise(x, tiny_model)
    assert isinstance(batched, torch.Tensor) and batched.shape == x.shape and batched.dtype == x.dtype
    torch.testing.assert_close(batched, expected)
    single = denoise(x[0], tiny_model)
    assert single.shape == (3, H, W)
    torch.testing.assert_close(single, expected[0])


@pytest.mark.parametrize("shape", [(1, H, W), (2, 1, H, W)])
def test_torch_gray_and_dtype(tiny_model, shape):
    x = torch.rand(shape, dtype=torch.float64)
    out = denoise(x, tiny_model)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device


@pytest.mark.parametrize("size", [(37, 53), (5, 3)], ids=["odd", "smaller-than-window"])
def test_odd_and_tiny_sizes(tiny_model, size):
    a = _random((*size, 3), np.uint8)
    assert denoise(a, tiny_model).shape == (*size, 3)
    x = torch.rand(3, *size)
    assert denoise(x, tiny_model).shape == x.shape


def test_unsupported_inputs(tiny_model):
    with pytest.raises(MaskdnError):
        denoise(np.zeros((H, W, 5), np.uint8), tiny_model)
    with pytest.raises(MaskdnError):
        denoise(torch.zeros(3, H, W, dtype=torch.uint8), tiny_model)
    with pytest.raises(MaskdnError):
        denoise([[0.5]], tiny_model)


# --------------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------------


def test_tiled_close_to_whole(tiny_model):
    # 40x56 is a multiple of the window, so whole image and tiles see no padding differences. Measured
    # with these random weights over 8 inputs: max |diff| <= 0.0085, mean ~3e-4 (outputs' std ~0.07).
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    whole = denoise_tensor(tiny_model, x)
    tiled = denoise_tensor(tiny_model, x, tile=32, tile_overlap=16)
    diff = (tiled - whole).abs()
    assert diff.max() < 0.02 and diff.mean() < 1e-3


def test_tiled_close_to_whole_odd_size(tiny_model):
    # 70x90: whole image and every tile get BORDER_CONTEXT replicated pixels around them, so tile edges
    # see context. Measured over 8 inputs: max |diff| <= 0.0039, mean <= 2.5e-4 (without the context:
    # 0.067 in the last rows/columns, mean ~2e-3).
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    whole = denoise_tensor(tiny_model, x)
    seen = []
    hook = tiny_model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[-2:]),
                                                with_kwargs=True)
    try:
        tiled = denoise_tensor(tiny_model, x, tile=32, tile_overlap=16, progress=True)
    finally:
        hook.remove()
    side = 32 + 2 * BORDER_CONTEXT  # each tile with its context
    assert len(seen) == 4 * 5 and all(s == (side, side) for s in seen)  # the model only ever sees tiles
    diff = (tiled - whole).abs()
    assert diff.max() < 0.01 and diff.mean() < 1e-3


def test_tile_covering_image_is_exact(tiny_model):
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(2))
    whole = denoise_tensor(tiny_model, x)
    assert torch.equal(denoise_tensor(tiny_model, x, tile=28, tile_overlap=8), whole)
    assert torch.equal(denoise_tensor(tiny_model, x, tile=64), whole)
    # tiles along the long side only (tile height = image height)
    one_way = denoise_tensor(tiny_model, x, tile=20, tile_overlap=8)
    assert one_way.shape == x.shape and (one_way - whole).abs().max() < 0.05


@pytest.mark.parametrize(
    "tile,overlap",
    [(16, 16), (16, 20), (4, 0), (16, -1), (0, 0)],
    ids=["equal", "overlap-larger", "below-window", "negative", "zero"],
)
def test_invalid_tile_options(tiny_model, tile, overlap):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(MaskdnError, match="tile"):
        denoise_tensor(tiny_model, x, tile=tile, tile_overlap=overlap)


def test_invalid_passes(tiny_model):
    with pytest.raises(MaskdnError, match="passes"):
        denoise_tensor(tiny_model, torch.rand(1, 3, 8, 8), passes=0)


# --------------------------------------------------------------------------------------------------
# Randomness, passes, self-ensemble
# --------------------------------------------------------------------------------------------------


def test_seed_determinism(tiny_masked_model):
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = denoise(x, tiny_masked_model, seed=1)
    b = denoise(x, tiny_masked_model, seed=1)
    c = denoise(x, tiny_masked_model, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_passes_average_sequential_draws(tiny_masked_model):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        singles = torch.stack([model_pass(tiny_masked_model, x, g) for _ in range(3)])
    averaged = denoise_tensor(tiny_masked_model, x, passes=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(averaged, singles.mean(0), rtol=0, atol=1e-6)


def test_deterministic_model_runs_once(tiny_model):
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(denoise_tensor(tiny_model, x, passes=4), denoise_tensor(tiny_model, x))


def test_self_ensemble_is_mean_of_8_transforms(tiny_model):
    x = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    outs = []
    with torch.inference_mode():
        for flip in (False, True):
            for k in range(4):
                xt = torch.rot90(x, k, dims=(-2, -1))
                xt = xt.flip(-1) if flip else xt
                y = model_pass(tiny_model, xt)
                y = y.flip(-1) if flip else y
                outs.append(torch.rot90(y, -k, dims=(-2, -1)))
    expected = torch.stack(outs).mean(0)
    torch.testing.assert_close(denoise_tensor(tiny_model, x, self_ensemble=True), expected, rtol=0, atol=1e-6)


def test_training_mode_is_restored(tiny_masked_model):
    tiny_masked_model.train()
    denoise_tensor(tiny_masked_model, torch.rand(1, 3, 8, 8))
    assert tiny_masked_model.training


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_random((H, W, 3), np.uint8)).save(src / "good.png")
    Image.fromarray(_random((H, W), np.uint16)).save(src / "deep.png")
    Image.fromarray(_random((H, W), np.uint8), mode="L").save(src / "gray.png")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return src


def test_denoise_files_batch(tiny_model, image_folder, tmp_path):
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    failures = denoise_files([str(image_folder)], out, tiny_model, progress=False)

    assert [p.name for p, _ in failures] == ["corrupt.png"]
    path, message = failures[0]
    assert str(path) in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "good.png", "gray.png"]  # no partial file
    with Image.open(out / "good.png") as im:
        assert im.mode == "RGB" and im.size == (W, H)
    with Image.open(out / "gray.png") as im:
        assert im.mode == "L" and im.size == (W, H)
    with Image.open(out / "deep.png") as im:
        assert np.asarray(im).dtype == np.uint16 and im.size == (W, H)
    assert {p.name: p.read_bytes() for p in image_folder.iterdir()} == before


def test_denoise_files_single_output_file(tiny_model, image_folder, tmp_path):
    target = tmp_path / "new" / "denoised.png"
    assert denoise_files([str(image_folder / "good.png")], target, tiny_model, progress=False, tile=8,
                         tile_overlap=4) == []
    with Image.open(target) as im:
        assert im.mode == "RGB" and im.size == (W, H)


def test_denoise_files_refuses_to_overwrite_inputs(tiny_model, image_folder):
    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    failures = denoise_files([str(image_folder / "good.png"), str(image_folder / "gray.png")], image_folder,
                             tiny_model, progress=False)
    assert sorted(p.name for p, _ in failures) == ["good.png", "gray.png"]
    assert all("would overwrite the input" in m for _, m in failures)
    assert {p.name: p.read_bytes() for p in image_folder.iterdir()} == before
    # the same refusal for a single named output file
    failures = denoise_files([str(image_folder / "good.png")], image_folder / "good.png", tiny_model, progress=False)
    assert len(failures) == 1 and "would overwrite the input" in failures[0][1]


def test_denoise_files_invalid_options_fail_once(tiny_model, image_folder, tmp_path):
    with pytest.raises(MaskdnError, match="tile"):
        denoise_files([str(image_folder)], tmp_path / "out", tiny_model, progress=False, tile=8, tile_overlap=8)


def test_bf16_inference_is_close_and_keeps_the_dtype(tiny_model):
    from maskdn.inference import denoise_tensor

    x = torch.rand(1, 3, 40, 48)
    full = denoise_tensor(tiny_model, x)
    half = denoise_tensor(tiny_model, x, bf16=True)
    assert half.dtype == torch.float32 and half.shape == x.shape
    assert 0 < (half - full).abs().max().item() < 0.05  # bf16 really ran, and stayed close


@pytest.mark.parametrize("units", [False, True, None])
def test_bf16_warns_where_the_cpu_has_no_bf16_units(tiny_model, tmp_path, monkeypatch, units):
    """On a CPU without bfloat16 units autocast is emulated (5.6× slower training step, 4–9× slower
    forward, measured on an AVX2 CPU): denoising with bf16 and training with bf16 = true say so, once,
    as a warning; with the units, or where it is not known, nothing is said, and float32 never warns."""
    import warnings

    from maskdn import devices
    from maskdn.train import TrainConfig, train

    from test_train import make_images

    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: units)
    x = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        denoise_tensor(tiny_model, x)
        denoise_tensor(tiny_model, x, bf16=True)
        cfg = TrainConfig(data=str(make_images(tmp_path / "clean")), out=str(tmp_path / "run"), preset="tiny",
                          patch_size=16, batch_size=2, iterations=1, warmup=0, bf16=True, tensorboard=False)
        train(cfg, progress=False)
    said = [str(w.message) for w in seen if "bfloat16 units" in str(w.message)]
    if units is False:
        assert len(said) == 2 and said[0].startswith("bf16: ") and said[1].startswith(f"{tmp_path / 'run'}: bf16 = true")
        assert next(w for w in seen if "bfloat16 units" in str(w.message)).filename == __file__  # the caller's line
    else:
        assert said == []


@pytest.mark.parametrize("i, name", [(0, "baseline-small"), (1, "masked-small")])  # masked: the kept-keys attention
def test_bf16_within_005_db_of_float32_on_real_photos(i, name):
    """The bundled models on the bundled Kodak photos (whole, 256×384; each model half of them, every
    photo checked once) under Gaussian σ=15: bf16 is within 0.05 dB PSNR of float32 (same attention
    masks in both passes). Whole photos: on a 128×192 crop the PSNR itself moves by ±0.05 dB with
    rounding noise of the same size (seen: +0.0500)."""
    from maskdn.demo import sample_paths
    from maskdn.io import read_image, to_float_rgb
    from maskdn.metrics import psnr
    from maskdn.noise import apply_noise
    from maskdn.weights import load_model

    model = load_model(name)
    assert len(sample_paths()[i::2]) == 2
    for path in sample_paths()[i::2]:
        clean = to_float_rgb(read_image(path))[0]
        clean = clean if clean.ndim == 4 else clean[None]
        noisy = apply_noise(clean, "gaussian:15", seed=0)
        full = psnr(denoise_tensor(model, noisy, generator=torch.Generator().manual_seed(0)).clamp(0, 1), clean)
        half = psnr(denoise_tensor(model, noisy, bf16=True, generator=torch.Generator().manual_seed(0)).clamp(0, 1), clean)
        assert abs(full - half) < 0.05, (path.name, full, half)


def test_non_finite_pixels_and_unusable_devices_are_one_line(tmp_path, tiny_model, capsys):
    """NaN/inf pixels would spread over thousands of output pixels: refused, naming the file on the CLI;
    a device this PyTorch cannot use is one line, not a traceback."""
    import tifffile

    from maskdn.cli import main
    from maskdn.devices import resolve_device
    from maskdn.errors import MaskdnError

    img = np.full((16, 16, 3), 0.5, dtype=np.float32)
    img[3, 4, 1] = np.nan
    with pytest.raises(MaskdnError, match="the image holds NaN or inf values; refused"):
        denoise(img, tiny_model)
    tifffile.imwrite(tmp_path / "nan.tif", img)
    assert main(["denoise", str(tmp_path / "nan.tif"), "-o", str(tmp_path / "out.tif")]) == 1
    assert f"{tmp_path / 'nan.tif'}: the image holds NaN or inf values" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(MaskdnError, match=r"--device bogus: not a device name"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(MaskdnError, match=r"--device cuda: (this PyTorch is built without CUDA|no CUDA GPU is visible); use --device cpu"):
            denoise(np.zeros((8, 8, 3), np.uint8), tiny_model, device="cuda")
        assert main(["denoise", str(tmp_path / "nan.tif"), "-o", str(tmp_path / "o.tif"), "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert "--device cuda:" in err and "Traceback" not in err
    assert resolve_device("cpu") == torch.device("cpu")


def test_denoise_leaves_the_callers_model_where_it_is(tiny_masked_model, monkeypatch):
    """denoise() runs a given model where it is: never Module.to() on the caller's object."""
    moved = []
    monkeypatch.setattr(tiny_masked_model, "to", lambda *a, **k: moved.append((a, k)))
    x = torch.rand(3, 16, 16)
    a = denoise(x, tiny_masked_model, seed=1)
    b = denoise(x, tiny_masked_model, seed=1, device="cpu")
    assert moved == [] and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_denoise_keeps_a_cuda_model_on_the_gpu(tiny_model):
    net = tiny_model.cuda()
    x = torch.rand(3, 16, 16)
    y = denoise(x, net)  # runs on the model's device, returns on the input's
    assert y.device == x.device and next(net.parameters()).is_cuda
    cpu = denoise(x, net, device="cpu")  # another device: a copy runs there
    assert next(net.parameters()).is_cuda and torch.allclose(y, cpu, atol=1e-4)
