"""Every input comes back as it went in, or is refused with one line before any work (issues 20 and 21).

Kinds covered: orientation tags in every container Pillow reads, embedded ICC profiles, multi-page and
float TIFFs, WebP, each mode and bit depth (kept or refused), the pixel limit checked from the header
for every reader and bit depth (decompression bombs), images that would not fit in memory (automatic
tiles, one line on an allocator failure), SSIM of images smaller than its window. Tiny random-weight
models and small images only.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

import maskdn.inference as inf
import maskdn.memory as mem
from maskdn.errors import MaskdnError
from maskdn.inference import denoise, denoise_files, denoise_tensor
from maskdn.io import (
    DEFAULT_MAX_PIXELS,
    ImageTooLarge,
    check_writable,
    orient,
    probe_image,
    read_image,
    write_image,
    write_pages,
)

H, W = 12, 20  # not square, so a rotation shows in the shape


def _rgb(dtype=np.uint8, channels=3, seed=0, shape=(H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    full = (*shape, channels) if channels > 1 else shape
    return rng.integers(0, np.iinfo(dtype).max + 1, size=full, dtype=np.int64).astype(dtype)


def _counting(model):
    """The number of forward passes ``model`` has run so far, as a one-element list that grows."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _one_failure(failures, src, dst=None) -> str:
    """The one failure's message, checked to be one line naming the input (or the output ``dst``)."""
    assert len(failures) == 1 and failures[0][0] == src
    message = failures[0][1]
    assert "\n" not in message and (str(src) in message or (dst is not None and message.startswith(f"{dst}: ")))
    return message


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _png_with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG's bytes with one more chunk right after IHDR."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --------------------------------------------------------------------------------------------------
# Orientation: every container, every value
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    a = _rgb()
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(orient(a, orientation), expected)


def _write_oriented(path, a, orientation):
    """``a`` stored with an orientation tag, in the container named by the suffix (and bit depth)."""
    import png
    import tifffile

    suffix = path.suffix
    if suffix == ".tif":
        tifffile.imwrite(path, a, photometric="rgb" if a.ndim == 3 else "minisblack",
                         extratags=[(274, "H", 1, orientation, True)])
    elif suffix == ".png" and a.dtype == np.uint16:
        import io

        buf = io.BytesIO()
        png.Writer(a.shape[1], a.shape[0], greyscale=False, bitdepth=16).write(buf, a.reshape(a.shape[0], -1))
        path.write_bytes(_png_with_chunk(buf.getvalue(), b"eXIf", _exif(orientation)))
    else:
        kw = {"quality": 100} if suffix == ".jpg" else {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(a).save(path, exif=_exif(orientation), **kw)


@pytest.mark.parametrize("name,dtype", [("o.tif", np.uint8), ("o16.tif", np.uint16), ("o.png", np.uint8),
                                        ("o16.png", np.uint16), ("o.webp", np.uint8), ("o.jpg", np.uint8)])
@pytest.mark.parametrize("orientation", [3, 6, 7, 8])
def test_orientation_applied_in_every_container(tmp_path, name, dtype, orientation):
    y, x = np.mgrid[0:H, 0:W]
    smooth = np.stack([x * 12, y * 20, (x + 2 * y) * 5], axis=-1).astype(np.uint8)  # JPEG keeps it close
    a = smooth if name.endswith(".jpg") else _rgb(dtype)
    path = tmp_path / name
    _write_oriented(path, a, orientation)
    b = read_image(path)
    expected = orient(a, orientation)
    assert b.shape == expected.shape and b.dtype == dtype
    if name.endswith(".jpg"):  # lossy: close to the expected, far from other orientations
        err = np.abs(b.astype(int) - expected.astype(int)).mean()
        assert err < 10 and all(err < np.abs(b.astype(int) - orient(a, o).astype(int)).mean() / 3
                                for o in range(1, 9) if orient(a, o).shape == b.shape and o != orientation)
    else:
        np.testing.assert_array_equal(b, expected)
    assert probe_image(path).pages[0].height == expected.shape[0]


def test_denoised_tiff_displays_as_it_went_in(tmp_path, tiny_model):
    a = _rgb()
    src = tmp_path / "sideways.tif"
    _write_oriented(src, a, 6)
    out = tmp_path / "out.tif"
    assert denoise_files([src], out, tiny_model, progress=False) == []
    import tifffile

    with tifffile.TiffFile(out) as tf:
        assert tf.pages.first.tags.valueof(274, 1) == 1  # upright pixels, no tag to apply twice
    np.testing.assert_array_equal(read_image(out), denoise(orient(a, 6), tiny_model))


# --------------------------------------------------------------------------------------------------
# Colour profiles
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dtype,channels", [("c.png", np.uint8, 3), ("c16.png", np.uint16, 3),
                                                 ("c.tif", np.uint16, 4), ("c.jpg", np.uint8, 3),
                                                 ("c.webp", np.uint8, 4)])
def test_icc_profile_kept(tmp_path, tiny_model, name, dtype, channels):
    icc = _srgb_profile()
    src = tmp_path / name
    write_image(src, _rgb(dtype, channels), icc_profile=icc)
    assert probe_image(src).icc_profile == icc
    out = tmp_path / "out" / name
    assert denoise_files([src], out.parent, tiny_model, progress=False) == []
    assert probe_image(out).icc_profile == icc
    with Image.open(out) as im:  # what colour-managed viewers read
        assert im.info.get("icc_profile") == icc


def test_icc_profile_into_bmp_is_refused_before_work(tmp_path, tiny_model):
    src = tmp_path / "c.png"
    write_image(src, _rgb(), icc_profile=_srgb_profile())
    calls = _counting(tiny_model)
    message = _one_failure(denoise_files([src], tmp_path / "o.bmp", tiny_model, progress=False), src, tmp_path / "o.bmp")
    assert "colour profile" in message and calls[0] == 0 and not (tmp_path / "o.bmp").exists()


# --------------------------------------------------------------------------------------------------
# Multi-page TIFF
# --------------------------------------------------------------------------------------------------


def _multipage(path, pages):
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for p in pages:
            tw.write(p, photometric="rgb" if p.ndim == 3 else "minisblack")


def test_every_page_of_a_multipage_tiff_is_denoised(tmp_path, tiny_model):
    pages = [_rgb(np.uint8, 3, 1), _rgb(np.uint16, 1, 2, (9, 7)), _rgb(np.uint8, 3, 3, (16, 5))]
    src = tmp_path / "stack.tif"
    _multipage(src, pages)
    assert len(probe_image(src).pages) == 3
    out = tmp_path / "out.tif"
    assert denoise_files([src], out, tiny_model, progress=False) == []
    header = probe_image(out)
    assert len(header.pages) == 3
    for i, page in enumerate(pages):
        got = read_image(out, page=i)
        assert got.dtype == page.dtype and got.shape == page.shape
        np.testing.assert_array_equal(got, denoise(page, tiny_model))


def test_multipage_into_a_single_page_format_is_refused_before_work(tmp_path, tiny_model):
    src = tmp_path / "stack.tif"
    _multipage(src, [_rgb(seed=1), _rgb(seed=2)])
    calls = _counting(tiny_model)
    message = _one_failure(denoise_files([src], tmp_path / "o.png", tiny_model, progress=False), src, tmp_path / "o.png")
    assert "2 pages" in message and ".tif" in message and calls[0] == 0
    assert not (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------------------------------
# Float TIFF, value ranges
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["unit", "0-255"])
def test_float_tiff_written_back_in_its_type_and_range(tmp_path, tiny_model, dtype, scale):
    import tifffile

    a = (np.random.default_rng(0).random((H, W, 3)) * scale).astype(dtype)
    src = tmp_path / "f.tif"
    tifffile.imwrite(src, a, photometric="rgb")
    out = tmp_path / "o.tif"
    assert denoise_files([src], out, tiny_model, progress=False) == []
    b = read_image(out)
    assert b.dtype == dtype and b.shape == a.shape
    lo, hi = min(0.0, float(a.min())), max(1.0, float(a.max()))
    assert lo <= float(b.min()) and float(b.max()) <= hi
    np.testing.assert_array_equal(b, denoise(a, tiny_model))
    if scale == 255.0:  # the model saw the image in [0, 1], as trained: the same result as 8-bit-like scaling
        unit = denoise((a.astype(np.float64) / float(a.max())).astype(np.float32), tiny_model)
        np.testing.assert_allclose(b.astype(np.float64) / float(a.max()), unit, atol=2e-2 if dtype == np.float16 else 1e-4)


def test_float_tiff_into_png_is_refused_before_work(tmp_path, tiny_model):
    import tifffile

    src = tmp_path / "f.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((H, W), dtype=np.float32))
    calls = _counting(tiny_model)
    message = _one_failure(denoise_files([src], tmp_path / "o.png", tiny_model, progress=False), src, tmp_path / "o.png")
    assert "PNG cannot store float32" in message and calls[0] == 0


# --------------------------------------------------------------------------------------------------
# WebP
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_webp_in_and_out(tmp_path, tiny_model, channels):
    a = _rgb(np.uint8, channels)
    src = write_image(tmp_path / "w.webp", a)
    np.testing.assert_array_equal(read_image(src), a)  # written lossless
    out = tmp_path / "o.webp"
    assert denoise_files([src], out, tiny_model, progress=False) == []
    with Image.open(out) as im:
        assert im.format == "WEBP" and im.mode == ("RGB", "RGBA")[channels - 3]
    np.testing.assert_array_equal(read_image(out), denoise(a, tiny_model))


def test_gray_into_webp_is_refused(tmp_path):
    with pytest.raises(MaskdnError, match="WebP cannot store gray images"):
        write_image(tmp_path / "g.webp", _rgb(np.uint8, 1))


# --------------------------------------------------------------------------------------------------
# Every mode and bit depth: kept, or refused with one line before any work
# --------------------------------------------------------------------------------------------------

KEPT = [(suffix, dtype, channels) for suffix in (".png", ".tif") for dtype in (np.uint8, np.uint16)
        for channels in (1, 2, 3, 4)] + [(".jpg", np.uint8, 1), (".bmp", np.uint8, 3)]


@pytest.mark.parametrize("suffix,dtype,channels", KEPT, ids=[f"{s[1:]}-{d.__name__}-{c}" for s, d, c in KEPT])
def test_modes_and_depths_come_back_as_they_went_in(tmp_path, tiny_model, suffix, dtype, channels):
    a = _rgb(dtype, channels)
    src = write_image(tmp_path / f"in{suffix}", a)
    out = tmp_path / "out" / src.name
    assert denoise_files([src], out.parent, tiny_model, progress=False) == []
    assert probe_image(out).pages == probe_image(src).pages  # size, channels, sample type
    if not (suffix == ".tif" and dtype == np.uint16 and channels == 2):  # Pillow cannot open that one
        with Image.open(src) as im_in, Image.open(out) as im_out:
            assert im_out.mode == im_in.mode
    b = read_image(out)
    assert b.dtype == dtype and b.shape == read_image(src).shape
    if channels in (2, 4):
        np.testing.assert_array_equal(b[..., -1], a[..., -1])  # alpha untouched


def test_gray_alpha_through_the_python_api(tiny_model):
    la = Image.fromarray(_rgb(np.uint8, 2), mode="LA")
    out = denoise(la, tiny_model)
    assert out.mode == "LA" and out.size == la.size
    np.testing.assert_array_equal(np.asarray(out)[..., 1], np.asarray(la)[..., 1])


def _refused_inputs(tmp_path):
    """(file, what the message says) for inputs that cannot come back as they were."""
    import png

    rgb = _rgb()
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.tif")
    Image.fromarray(_rgb(np.uint8, 1)).convert("1").save(tmp_path / "bilevel.png")
    Image.fromarray(_rgb(np.uint8, 1)).convert("1").save(tmp_path / "bilevel.tif")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    frames = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    with open(tmp_path / "two-bit.png", "wb") as f:
        png.Writer(W, H, greyscale=True, bitdepth=2).write(f, (_rgb(np.uint8, 1) >> 6).tolist())
    _tiff_bomb(tmp_path / "twelve.tif", side=16, bits=12)  # a 16x16 one: refused from its header
    return [("palette.png", "palette"), ("palette.tif", "palette"), ("bilevel.png", "1-bit"),
            ("bilevel.tif", "1-bit"), ("cmyk.jpg", "CMYK"), ("cmyk.tif", "CMYK"), ("anim.png", "animated"),
            ("anim.webp", "animated"), ("two-bit.png", "2-bit"), ("twelve.tif", "12-bit")]


def test_inputs_that_would_change_are_refused_before_work(tmp_path, tiny_model, capsys):
    from maskdn.cli import main

    src = tmp_path / "in"
    src.mkdir()
    cases = _refused_inputs(src)
    calls = _counting(tiny_model)
    failures = dict(denoise_files([src / n for n, _ in cases], tmp_path / "out", tiny_model, progress=False))
    for name, what in cases:
        message = failures[src / name]
        assert what in message and str(src / name) in message and "\n" not in message, (name, message)
    assert calls[0] == 0 and list((tmp_path / "out").iterdir()) == []
    assert main(["denoise", str(src / "cmyk.jpg"), "-o", str(tmp_path / "o.jpg")]) == 1
    err = capsys.readouterr().err
    assert "a CMYK image" in err and "Traceback" not in err and not (tmp_path / "o.jpg").exists()


def test_check_writable_names_what_the_output_cannot_hold(tmp_path):
    rgba16 = write_image(tmp_path / "a.png", _rgb(np.uint16, 4))
    header = probe_image(rgba16)
    check_writable(tmp_path / "ok.tif", header)
    with pytest.raises(MaskdnError, match="JPEG cannot store 16-bit"):
        check_writable(tmp_path / "o.jpg", header)
    with pytest.raises(MaskdnError, match="BMP cannot store 16-bit"):
        check_writable(tmp_path / "o.bmp", header)
    with pytest.raises(MaskdnError, match="cannot store an alpha channel"):
        check_writable(tmp_path / "o.jpg", probe_image(write_image(tmp_path / "b.png", _rgb(np.uint8, 4))))
    with pytest.raises(MaskdnError, match=r"PNG cannot store 2 pages, use \.tif"):
        write_pages(tmp_path / "two.png", [_rgb(), _rgb()])


# --------------------------------------------------------------------------------------------------
# Decompression bombs: one pixel limit, from the header, for every reader and bit depth
# --------------------------------------------------------------------------------------------------


def _png_bomb(path, bits, color, side=20000):
    """A PNG of a few hundred bytes whose header claims ``side``×``side`` pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, bits, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    chunks = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                      for kind, body in ((b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _tiff_bomb(path, side=20000, bits=8):
    """A little-endian TIFF of a few hundred bytes whose IFD claims ``side``×``side`` pixels."""
    strip = zlib.compress(b"\x00" * 1000)
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, bits), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(strip))]
    ifd_at = 8 + len(strip)
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<I", v) if kind == 4 else struct.pack("<HH", v, 0))
        for tag, kind, count, v in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + strip + ifd)


def _bmp_bomb(path, side=20000):
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    path.write_bytes(header + info + b"\x00" * 64)


@pytest.mark.parametrize("kind", ["png8", "png16-gray", "png16-rgb", "png16-rgba", "tiff8", "tiff16", "bmp"])
def test_bombs_are_refused_from_the_header(tmp_path, kind):
    path = tmp_path / f"bomb-{kind}"
    if kind.startswith("png"):
        bits, color = {"png8": (8, 2), "png16-gray": (16, 0), "png16-rgb": (16, 2), "png16-rgba": (16, 6)}[kind]
        _png_bomb(path, bits, color)
    elif kind.startswith("tiff"):
        _tiff_bomb(path, bits=16 if kind == "tiff16" else 8)
    else:
        _bmp_bomb(path)
    assert path.stat().st_size < 2000
    with pytest.raises(ImageTooLarge) as e:
        read_image(path)
    message = str(e.value)
    assert str(path) in message and "20000x20000" in message and "decompression" in message and "\n" not in message
    assert probe_image(path, max_pixels=None).pages[0].width == 20000  # the header alone, no decoding


def test_pixel_limit_default_is_pillows():
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def test_tiled_runs_and_an_explicit_limit_let_large_images_through(tmp_path, tiny_model, monkeypatch, capsys):
    """The limit scaled down (16 pixels untiled, 64 tiled) so that small images stand for large ones."""
    from maskdn.cli import main

    monkeypatch.setattr(inf, "DEFAULT_MAX_PIXELS", 16)
    monkeypatch.setattr(inf, "TILED_MAX_PIXELS", 64)
    small, large = (write_image(tmp_path / n, _rgb(shape=s)) for n, s in (("s.png", (8, 8)), ("l.png", (9, 9))))
    src = write_image(tmp_path / "p.png", _rgb(shape=(6, 10)))  # 60 pixels: a "panorama"
    message = _one_failure(denoise_files([src], tmp_path / "o1.png", tiny_model, progress=False), src)
    assert "--tile" in message and "--max-pixels" in message
    assert denoise_files([src], tmp_path / "o2.png", tiny_model, progress=False, tile=8, tile_overlap=2) == []
    assert denoise_files([src], tmp_path / "o3.png", tiny_model, progress=False, max_pixels=60) == []
    message = _one_failure(denoise_files([large], tmp_path / "o4.png", tiny_model, progress=False, tile=8,
                                         tile_overlap=2), large)
    assert "--max-pixels" in message
    assert denoise_files([small], tmp_path / "o5.png", tiny_model, progress=False, tile=8, tile_overlap=2) == []
    assert main(["denoise", str(src), "-o", str(tmp_path / "o6.png"), "--max-pixels", "60"]) == 0
    with pytest.raises(MaskdnError, match="--max-pixels must be an integer >= 1"):
        denoise_files([src], tmp_path / "o7.png", tiny_model, progress=False, max_pixels=0)


def test_cli_help_states_the_limits():
    from maskdn.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["denoise"].format_help()
    flat = " ".join(text.split())
    assert f"{DEFAULT_MAX_PIXELS:,}" in flat and f"{inf.TILED_MAX_PIXELS:,}" in flat


# --------------------------------------------------------------------------------------------------
# Memory: automatic tiles, one line when the allocator fails
# --------------------------------------------------------------------------------------------------


def test_large_images_are_tiled_automatically(tiny_model, monkeypatch):
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    per_pixel = mem.forward_bytes_per_pixel(tiny_model)
    assert per_pixel == 4 * (256 + 4 * 24)  # the CPU fast path's formula, tiny preset (C = 24)
    monkeypatch.setattr(mem, "available_memory", lambda device: None)
    whole = denoise_tensor(tiny_model, x, tile_overlap=8)
    monkeypatch.setattr(mem, "available_memory", lambda device: int(per_pixel * 42 * 42 / mem.MEMORY_FRACTION))
    assert mem.plan_tile(tiny_model, tuple(x.shape), "cpu", tile_overlap=8) == 40  # a multiple of the window
    auto = denoise_tensor(tiny_model, x, tile_overlap=8)
    torch.testing.assert_close(auto, denoise_tensor(tiny_model, x, tile=40, tile_overlap=8), rtol=0, atol=0)
    assert not torch.equal(auto, whole)  # it really tiled
    monkeypatch.setattr(mem, "available_memory", lambda device: 10**12)
    assert mem.plan_tile(tiny_model, tuple(x.shape), "cpu") is None
    torch.testing.assert_close(denoise_tensor(tiny_model, x, tile_overlap=8), whole, rtol=0, atol=0)


def test_running_out_of_memory_is_one_line_naming_tile(tmp_path, tiny_model, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(tiny_model, "forward", no_memory)
    with pytest.raises(MaskdnError, match=r"out of memory denoising a 20x12 image whole on cpu; use smaller tiles \(--tile 64\)"):
        denoise(_rgb(), tiny_model)
    src = write_image(tmp_path / "a.png", _rgb())
    message = _one_failure(denoise_files([src], tmp_path / "o.png", tiny_model, progress=False), src)
    assert "--tile" in message and not (tmp_path / "o.png").exists()
    monkeypatch.setattr(tiny_model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not disguised
        denoise(_rgb(), tiny_model)


def test_full_resolution_buffers_that_cannot_fit_are_refused_before_work(tmp_path, tiny_model, monkeypatch):
    src = write_image(tmp_path / "a.png", _rgb())
    monkeypatch.setattr(mem, "available_memory", lambda device: 1000)
    calls = _counting(tiny_model)
    message = _one_failure(denoise_files([src], tmp_path / "o.png", tiny_model, progress=False), src)
    assert "GiB at full resolution" in message and calls[0] == 0


# --------------------------------------------------------------------------------------------------
# SSIM of images smaller than its window
# --------------------------------------------------------------------------------------------------


def test_bench_on_images_smaller_than_the_ssim_window(tmp_path, tiny_model):
    import json

    from maskdn.generalization import run_bench

    data = tmp_path / "tiny"
    data.mkdir()
    for i in range(2):
        write_image(data / f"t{i}.png", _rgb(shape=(8, 8), seed=i))
    records = run_bench([data], [("m", lambda x: x)], ["gaussian:15"], tmp_path / "out", lpips=False, jobs=1,
                        progress=False)
    assert len(records) == 2
    for r in records:
        assert r["ssim"] is None and np.isfinite(r["psnr"]) and r["psnr"] > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["psnr"] for r in saved] == [r["psnr"] for r in records]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "SSIM left blank for 2 image(s) smaller than its 11x11 window" in summary and " / –" in summary
    csv_row = (tmp_path / "out" / "summary.csv").read_text().splitlines()[1]
    assert csv_row.endswith(",")  # SSIM blank, PSNR there


# --------------------------------------------------------------------------------------------------
# Flat colours and image borders, with the bundled models
# --------------------------------------------------------------------------------------------------

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128)]


@pytest.fixture(scope="module")
def bundled():
    from maskdn.weights import load_model

    return {name: load_model(name) for name in ("baseline-small", "masked-small")}


@pytest.mark.parametrize("colour", COLOURS, ids=["red", "green", "blue", "white", "black", "grey"])
def test_clean_flat_colours_come_back_flat(bundled, colour):
    """A noise-free flat image (or flat regions of two colours) comes back as it is, corners included:
    the bundled models shifted pure red to (236, 9, 8) and white corners to 217."""
    flat = np.empty((40, 36, 3), np.uint8)
    flat[:] = colour
    halves = flat.copy()
    halves[:, 18:] = (255, 255, 255) if colour != (255, 255, 255) else (0, 0, 0)
    for model in bundled.values():
        for a in (flat, halves):
            assert np.abs(denoise(a, model).astype(int) - a).max() <= 2


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128)], ids=["white", "black", "grey"])
def test_borders_are_denoised_like_the_inside(bundled, colour):
    """Nearly flat images (±1 level, so no window is exactly constant and the model does the work): the
    outermost pixels as close as the inside, within a level (without border context the corners were up
    to 38 levels off). masked-small's own bias on black, up to 5 levels in red, is the same inside."""
    rng = np.random.default_rng(0)
    a = np.clip(np.array(colour) + rng.integers(-1, 2, (40, 36, 3)), 0, 255).astype(np.uint8)
    for model in bundled.values():
        err = np.abs(denoise(a, model).astype(int) - a)
        ring = np.concatenate([err[:2].ravel(), err[-2:].ravel(), err[:, :2].ravel(), err[:, -2:].ravel()])
        assert ring.max() <= err[8:-8, 8:-8].max() + 1 and ring.max() <= 6


def test_noisy_images_are_never_passed_through(tiny_model):
    """Only exactly constant windows are kept as they are: noise leaves none, so a noisy flat image (and
    a noisy photo) is the model's output everywhere."""
    flat = torch.full((1, 3, 40, 40), 0.5)
    noisy = (flat + torch.randn(flat.shape, generator=torch.Generator().manual_seed(0)) / 255).clamp(0, 1)
    noisy = torch.round(noisy * 255) / 255
    with torch.inference_mode():
        expected = inf.model_pass(tiny_model, noisy)
    assert torch.equal(denoise_tensor(tiny_model, noisy), expected)
    assert torch.equal(denoise_tensor(tiny_model, flat), flat)
