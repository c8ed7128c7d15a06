"""Image I/O: native round trips per format, one-line errors, atomic writes, input expansion, float conversion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import maskdn.io as mio
from maskdn.errors import MaskdnError
from maskdn.io import atomic_write, expand_inputs, from_float_rgb, read_image, to_float_rgb, write_image

H, W = 12, 17  # odd sizes catch row/column mix-ups


def _img(dtype, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (H, W) if channels == 1 else (H, W, channels)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.int64).astype(dtype)


def _smooth_rgb() -> np.ndarray:
    """A gradient: JPEG keeps it close, unlike noise."""
    y, x = np.mgrid[0:32, 0:48]
    return np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(MaskdnError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lossless_round_trip(tmp_path, suffix, dtype, channels):
    a = _img(dtype, channels)
    out = write_image(tmp_path / f"x{suffix}", a)
    b = read_image(out)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("channels", [1, 3])
def test_bmp_round_trip(tmp_path, channels):
    a = _img(np.uint8, channels)
    b = read_image(write_image(tmp_path / "x.BMP", a))  # suffix is case-insensitive
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path, channels):
    a = _smooth_rgb() if channels == 3 else _smooth_rgb()[..., 0]
    b = read_image(write_image(tmp_path / "x.jpg", a))
    assert b.dtype == np.uint8 and b.shape == a.shape
    assert np.abs(b.astype(int) - a.astype(int)).mean() < 3


def test_hxwx1_is_written_as_gray(tmp_path):
    a = _img(np.uint16, 1)[..., None]
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "g.png", a)), a[..., 0])


def test_float_tiff_returned_as_float32(tmp_path):
    import tifffile

    a = np.linspace(-0.5, 2.0, H * W, dtype=np.float32).reshape(H, W)
    tifffile.imwrite(tmp_path / "f.tif", a)
    b = read_image(tmp_path / "f.tif")
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, a)


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    a = _img(np.uint8, 3)
    Image.fromarray(a).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), a)


def test_pillow_modes_are_normalised(tmp_path):
    rgb = _img(np.uint8, 3)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (H, W, 3)
    Image.fromarray(_img(np.uint8, 1)).convert("1").save(tmp_path / "b.png")
    assert set(np.unique(read_image(tmp_path / "b.png"))) <= {0, 255}
    gray, alpha = _img(np.uint8, 1, 1), _img(np.uint8, 1, 2)
    Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]).save(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png")  # gray+alpha stays gray+alpha
    np.testing.assert_array_equal(la, np.stack([gray, alpha], axis=-1))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (H, W, 3)


def test_exif_orientation_applied(tmp_path):
    a = _smooth_rgb()  # 32 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif, quality=95)
    b = read_image(tmp_path / "o.jpg")
    assert b.shape == (48, 32, 3)
    assert np.abs(b.astype(int) - np.rot90(a, k=-1).astype(int)).mean() < 3


def test_format_detected_by_content(tmp_path):
    a = _img(np.uint16, 3)
    write_image(tmp_path / "x.png", a)
    os.rename(tmp_path / "x.png", tmp_path / "x.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "x.tif"), a)


# ---------------------------------------------------------------------------------------------- read errors


def test_read_errors_are_one_line_and_name_the_file(tmp_path):
    assert "no such file" in _error(read_image, tmp_path / "missing.png")
    assert "folder" in _error(read_image, tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty file" in _error(read_image, tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello\nnot an image\n")
    msg = _error(read_image, tmp_path / "text.png")
    assert str(tmp_path / "text.png") in msg and "not an image" in msg


@pytest.mark.parametrize("suffix,dtype,channels", [(".png", np.uint8, 3), (".png", np.uint16, 3),
                                                   (".png", np.uint16, 1), (".jpg", np.uint8, 3),
                                                   (".tif", np.uint16, 3)])
def test_truncated_files_are_reported(tmp_path, suffix, dtype, channels):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    a = _smooth_rgb().astype(dtype) * (257 if dtype == np.uint16 else 1)
    a = a if channels == 3 else a[..., 0]
    path = write_image(tmp_path / f"t{suffix}", a)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _error(read_image, path)
    assert str(path) in msg and "truncated or corrupt" in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path):
    path = write_image(tmp_path / "x.png", _img(np.uint8, 1))
    path.chmod(0)
    assert "permission denied" in _error(read_image, path)


# ---------------------------------------------------------------------------------------------- writing


def test_write_errors(tmp_path):
    rgb16, rgba8 = _img(np.uint16, 3), _img(np.uint8, 4)
    msg = _error(write_image, tmp_path / "nodir" / "x.png", rgba8)
    assert str(tmp_path / "nodir" / "x.png") in msg and "does not exist" in msg
    assert "16-bit" in _error(write_image, tmp_path / "x.jpg", rgb16)
    assert "16-bit" in _error(write_image, tmp_path / "x.bmp", rgb16)
    assert "alpha" in _error(write_image, tmp_path / "x.jpg", rgba8)
    assert "suffix" in _error(write_image, tmp_path / "x.gif", rgba8)
    assert "shape" in _error(write_image, tmp_path / "x.png", np.zeros((4, 4, 5), np.uint8))
    assert "float32" in _error(write_image, tmp_path / "x.png", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_refusal(tmp_path):
    a, b = _img(np.uint8, 3, 1), _img(np.uint8, 3, 2)
    path = write_image(tmp_path / "x.png", a)
    assert "refusing to overwrite" in _error(write_image, path, b, overwrite=False)
    np.testing.assert_array_equal(read_image(path), a)
    write_image(path, b)  # overwrite=True is the default
    np.testing.assert_array_equal(read_image(path), b)


def test_failed_write_leaves_nothing_and_keeps_old_target(tmp_path, monkeypatch):
    def broken_png(tmp, a, icc):
        Path(tmp).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio, "_write_png16", broken_png)
    msg = _error(write_image, tmp_path / "new.png", _img(np.uint16, 3))
    assert "new.png: cannot write (No space left on device)" in msg
    assert list(tmp_path.iterdir()) == []

    old = write_image(tmp_path / "old.png", _img(np.uint8, 3))
    before = old.read_bytes()
    _error(write_image, old, _img(np.uint16, 3))
    assert old.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_generic(tmp_path):
    target = tmp_path / "report.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != target
        tmp.write_text("{}")
        assert not target.exists()
    assert target.read_text() == "{}"
    if os.name == "posix":  # created with the usual umask, not mkstemp's 0600
        umask = os.umask(0)
        os.umask(umask)
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "{}"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- inputs


def test_expand_inputs(tmp_path, monkeypatch):
    a = np.zeros((4, 4), np.uint8)
    for name in ("b.png", "a.JPG", "c.tif"):
        write_image(tmp_path / name, a)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "d.png", a)
    (tmp_path / "empty").mkdir()

    assert expand_inputs([tmp_path]) == [tmp_path / n for n in ("a.JPG", "b.png", "c.tif")]
    assert expand_inputs([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # named file kept
    assert expand_inputs([str(tmp_path / "*.png")]) == [tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "**" / "*.png")]) == [tmp_path / "b.png", tmp_path / "sub" / "d.png"]
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["c.tif", tmp_path / "c.tif", "*.tif", tmp_path / "b.png"]) == [Path("c.tif"), tmp_path / "b.png"]

    assert "no such file, folder or matching images" in _error(expand_inputs, [tmp_path / "nope.png"])
    assert "no such file" in _error(expand_inputs, [str(tmp_path / "*.bmp")])
    msg = _error(expand_inputs, [tmp_path / "empty"])
    assert str(tmp_path / "empty") in msg and "no images" in msg


# ---------------------------------------------------------------------------------------------- float conversion


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(H, W), (H, W, 1), (H, W, 2), (H, W, 3), (H, W, 4)])
def test_float_round_trip_exact(dtype, shape):
    a = np.random.default_rng(3).integers(0, np.iinfo(dtype).max + 1, size=shape).astype(dtype)
    x, info = to_float_rgb(a)
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    b = from_float_rgb(x, info)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("shape", [(H, W), (H, W, 3), (H, W, 4)])
def test_float_round_trip_float32(shape):
    a = np.random.default_rng(4).random(shape, dtype=np.float32)
    b = from_float_rgb(*to_float_rgb(a))
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_from_float_clamps_and_keeps_alpha():
    a = _img(np.uint8, 4)
    x, info = to_float_rgb(a)
    y = x * 3 - 1  # partly outside [0, 1]
    out = from_float_rgb(y, info)
    expected = np.rint(np.clip(y.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., :3], expected)
    np.testing.assert_array_equal(out[..., 3], a[..., 3])
    hdr = np.array([[[0.5, 4.0, -1.0]]], np.float32)  # float beyond [0, 1]: its own range is kept
    x, info = to_float_rgb(hdr)
    assert (info.low, info.high) == (-1.0, 4.0) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_allclose(from_float_rgb(x, info), hdr, atol=1e-6)
    assert from_float_rgb(x * 2, info).max() == 4.0  # clamped to the input's range, not to [0, 1]
    gray = np.array([[0.2, 0.8]], np.float32)
    x, info = to_float_rgb(gray)
    assert from_float_rgb(x + 1, info).max() == 1.0


def test_to_float_rejects_bad_input():
    assert "shape" in _error(to_float_rgb, np.zeros((4, 4, 5), np.uint8))
    assert "int32" in _error(to_float_rgb, np.zeros((4, 4), np.int32))


def test_temporary_files_of_interrupted_writes_are_skipped_and_cleaned(tmp_path):
    """A SIGKILL mid-write leaves ``.<stem>.<8 hex>.tmp<suffix>`` behind: folder inputs skip such names,
    and the next write of the same file removes its own stale temporaries (not other files' ones)."""
    from maskdn.io import atomic_write, expand_inputs, is_temp_file

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    stale = tmp_path / ".out.0123abcd.tmp.png"
    other = tmp_path / ".out.x.0123abcd.tmp.png"  # a temporary of out.x.png
    stale.write_bytes(b"partial")
    other.write_bytes(b"partial")
    assert is_temp_file(stale) and not is_temp_file(tmp_path / "a.png")
    assert expand_inputs([tmp_path]) == [tmp_path / "a.png"]
    with atomic_write(tmp_path / "out.png") as tmp:
        tmp.write_bytes(b"done")
    assert not stale.exists() and other.exists() and (tmp_path / "out.png").read_bytes() == b"done"
