"""Image I/O for denoising: every image comes back as it went in, or is refused before any work.

* :func:`probe_image` reads a file's header only: size, pages, channels, sample type, orientation and
  colour profile. Every reader goes through it first, so one pixel limit (:data:`DEFAULT_MAX_PIXELS`,
  Pillow's) guards every format and bit depth against decompression bombs before anything is decoded.
* :func:`read_image` / :func:`read_page` return a page as displayed, in its native type: ``HxW``
  (gray), ``HxWx2`` (gray + alpha), ``HxWx3`` / ``HxWx4`` (RGB / RGBA), uint8 or uint16; float TIFFs as
  float16/32/64, unscaled. Pillow cannot hold 16-bit colour, so 16-bit colour PNGs are read with
  ``pypng`` and TIFFs with ``tifffile`` (Pillow for the rest). The EXIF/TIFF orientation is applied
  whatever the container (:func:`orient`). Palette images become RGB or RGBA, bilevel gray 0/255, CMYK
  RGB: :func:`check_writable` refuses those for a round trip, since they would not come back as they
  were.
* :func:`write_image` / :func:`write_pages` write PNG, TIFF (also float and several pages), JPEG, BMP
  and WebP, embedding the input's ICC profile, through :func:`atomic_write`: to a temporary file beside
  the target, renamed over it, so a failed or interrupted write never leaves a half-written output.
* :func:`expand_inputs` turns command-line files, folders and glob patterns into a list of images.
* :func:`to_float_rgb` / :func:`from_float_rgb` convert between the native form and the float RGB
  tensor the color model takes, remembering what is needed to go back (gray, alpha, dtype, range).

Every problem a user can cause is a :class:`MaskdnError` whose one-line message names the file.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import MaskdnError, first_line

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageHeader",
    "ImageInfo",
    "ImageTooLarge",
    "PageHeader",
    "atomic_write",
    "check_file",
    "check_writable",
    "expand_inputs",
    "from_float_rgb",
    "make_output_dir",
    "orient",
    "probe_image",
    "read_image",
    "read_page",
    "to_float_rgb",
    "write_image",
    "write_pages",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")
"""Suffixes read and written (compared case-insensitively)."""

DEFAULT_MAX_PIXELS = 89_478_485
"""The most pixels (width × height, per page) read unless the caller says otherwise: Pillow's
``Image.MAX_IMAGE_PIXELS`` (2³⁰ / 4 / 3 ≈ 89.5 million, about 256 MiB of 24-bit RGB), here applied to
every reader and bit depth from the header, before decoding."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _os_reason(e: OSError) -> str:
    return e.strerror or first_line(e)


# --------------------------------------------------------------------------------------------------
# Reading: the header first (size, pages, mode, profile, orientation), then the pixels
# --------------------------------------------------------------------------------------------------


def check_file(path: Path, kind: str = "an image") -> bytes:
    """Fail early, with a clear message, on paths that cannot be ``kind``; return the first bytes.

    The bytes let the caller detect the format from the content (magic numbers), not the suffix.

    Args:
        path: The file to check.
        kind: What the file should be, for the message (e.g. ``"an image"``).

    Returns:
        The first 33 bytes of the file (fewer if it is shorter): for a PNG, its signature and whole
        ``IHDR`` chunk, including bit depth and colour type.

    Raises:
        MaskdnError: ``"<path>: no such file"``, ``"<path>: is a folder, not <kind>"``,
            ``"<path>: empty file"``, ``"<path>: permission denied"`` or
            ``"<path>: cannot read (<reason>)"`` for any other ``OSError``.
    """
    try:
        if not path.exists():
            raise MaskdnError(f"{path}: no such file")
        if path.is_dir():
            raise MaskdnError(f"{path}: is a folder, not {kind}")
        if path.stat().st_size == 0:
            raise MaskdnError(f"{path}: empty file")
        with open(path, "rb") as f:
            return f.read(33)
    except PermissionError:
        raise MaskdnError(f"{path}: permission denied") from None
    except OSError as e:
        raise MaskdnError(f"{path}: cannot read ({_os_reason(e)})") from None


class ImageTooLarge(MaskdnError):
    """An image whose header claims more pixels than the caller's limit; raised before any decoding.

    Args:
        path: The file.
        width: The page's width in pixels, from the header.
        height: The page's height in pixels, from the header.
        limit: The limit in pixels (width × height) that it exceeds.
        hint: What to do about it, appended to the message (may be empty).
    """

    def __init__(self, path: Path, width: int, height: int, limit: int, hint: str = "") -> None:
        self.path, self.width, self.height, self.limit = path, width, height, limit
        tail = f"; {hint}" if hint else ""
        super().__init__(f"{path}: {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
                         f"(a guard against decompression bombs){tail}")

    def with_hint(self, hint: str) -> "ImageTooLarge":
        """The same error with ``hint`` (what the caller can do about it) in its message.

        Args:
            hint: One clause, e.g. ``"raise it with --max-pixels"``.

        Returns:
            A new :class:`ImageTooLarge`.
        """
        return ImageTooLarge(self.path, self.width, self.height, self.limit, hint)


@dataclass(frozen=True)
class PageHeader:
    """One page of an image as its header describes it (nothing decoded).

    Attributes:
        height: Rows as displayed, i.e. after the orientation is applied (pixels).
        width: Columns as displayed (pixels).
        channels: Channels of the array :func:`read_image` returns for this page: 1 (gray), 2 (gray +
            alpha), 3 (RGB) or 4 (RGBA).
        dtype: Its sample type: uint8, uint16, or float16/float32/float64 (float TIFFs, Pillow mode ``F``).
        orientation: The EXIF/TIFF orientation (1–8, TIFF tag 274 / EXIF 0x0112) that reading applies;
            1 when there is none.
        unsupported: Why this page cannot be written back in its own mode and bit depth (e.g.
            ``"a palette image"``, ``"a CMYK image"``); None when it can.
    """

    height: int
    width: int
    channels: int
    dtype: np.dtype
    orientation: int = 1
    unsupported: str | None = None


@dataclass(frozen=True)
class ImageHeader:
    """What an image file holds, read from its header by :func:`probe_image` without decoding pixels.

    Attributes:
        path: The file.
        format: The container as detected from the content: ``"PNG"``, ``"TIFF"``, or Pillow's format
            name (``"JPEG"``, ``"WEBP"``, ``"BMP"``, ``"GIF"``, ...).
        pages: One :class:`PageHeader` per page: TIFF pages in file order (the main IFD chain); one for
            every other format (an animation's first frame, a JPEG/MPO's primary image).
        icc_profile: The embedded ICC colour profile (raw bytes; TIFF tag 34675, PNG ``iCCP``, JPEG
            ``APP2``, WebP ``ICCP``), of the first page for TIFF; None without one.
        unsupported: Why the file as a whole cannot be written back as it is (an animation); None when
            it can.
    """

    path: Path
    format: str
    pages: tuple[PageHeader, ...]
    icc_profile: bytes | None = None
    unsupported: str | None = None
    _decoder: str = field(default="pillow", repr=False)  # "pillow", "pypng" or "tifffile"


_MODES = {  # Pillow mode → (channels, dtype) as read, and why it cannot be written back (None: it can)
    "L": (1, np.uint8, None),
    "LA": (2, np.uint8, None),
    "RGB": (3, np.uint8, None),
    "RGBA": (4, np.uint8, None),
    "I;16": (1, np.uint16, None),
    "I;16L": (1, np.uint16, None),
    "I;16B": (1, np.uint16, None),
    "I;16N": (1, np.uint16, None),
    "F": (1, np.float32, None),
    "P": (3, np.uint8, "a palette image"),
    "PA": (4, np.uint8, "a palette image"),
    "1": (1, np.uint8, "a 1-bit bilevel image"),
    "CMYK": (3, np.uint8, "a CMYK image"),
    "I": (1, np.uint16, "a 32-bit integer image"),
    "La": (2, np.uint8, "an image with premultiplied alpha"),
    "RGBa": (4, np.uint8, "an image with premultiplied alpha"),
    "YCbCr": (3, np.uint8, "a YCbCr image"),
    "LAB": (3, np.uint8, "a CIELAB image"),
    "HSV": (3, np.uint8, "an HSV image"),
    "RGBX": (3, np.uint8, "an RGBX image"),
}

_ROUND_TRIP_HELP = "convert it to gray, RGB or RGBA (8 or 16 bits) or float TIFF first"

_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _pillow_unlimited() -> Iterator[None]:
    """Pillow's own decompression-bomb check off: ours (:func:`probe_image`) runs first, on every reader.

    Pillow only offers the module-wide ``Image.MAX_IMAGE_PIXELS``; it is restored on exit, under a lock.
    """
    with _PIL_LIMIT:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_orientation(data: bytes | None) -> int:
    if not data:
        return 1
    exif = Image.Exif()
    with contextlib.suppress(Exception):  # a broken EXIF block is not worth refusing the image
        exif.load(data)
    return _orientation(exif.get(0x0112, 1))


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation to a stored ``[H, W, ...]`` array, giving it as displayed.

    The eight values of TIFF 6.0 tag 274 (EXIF 0x0112): 1 as stored, 2 mirrored left–right, 3 rotated
    180°, 4 mirrored top–bottom, 5 transposed, 6 rotated 90° clockwise, 7 transversed, 8 rotated 90°
    counter-clockwise; the same transforms as Pillow's ``ImageOps.exif_transpose``.

    Args:
        array: ``[H, W]`` or ``[H, W, C]`` as stored in the file.
        orientation: 1–8; any other value counts as 1.

    Returns:
        A contiguous array as displayed (``[W, H, ...]`` for 5–8).
    """
    a = array
    o = _orientation(orientation)
    if o == 1:
        return a
    if o in (5, 7):
        a = a.swapaxes(0, 1)
    a = {2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a, 6: np.rot90(a, -1), 7: a[::-1, ::-1],
         8: np.rot90(a, 1)}[o]
    return np.ascontiguousarray(a)


def _page(height: int, width: int, channels: int, dtype, orientation: int = 1,
          unsupported: str | None = None) -> PageHeader:
    if orientation in (5, 6, 7, 8):
        height, width = width, height
    return PageHeader(height, width, channels, np.dtype(dtype), orientation, unsupported)


def _png_chunks(path: Path) -> dict[bytes, bytes]:
    """The PNG chunks that describe the image (IHDR, iCCP, eXIf, acTL), read by seeking past the pixel data."""
    wanted = {b"IHDR", b"iCCP", b"eXIf", b"acTL"}
    found: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        f.seek(8)
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind in wanted and kind not in found:
                found[kind] = f.read(length)
                f.seek(4, 1)
            else:
                f.seek(length + 4, 1)
            if kind == b"IEND":
                break
    return found


def _probe_png(path: Path) -> ImageHeader:
    chunks = _png_chunks(path)
    ihdr = chunks.get(b"IHDR", b"")
    if len(ihdr) < 13:
        raise MaskdnError(f"{path}: truncated or corrupt image (no PNG header)")
    width, height, bits, color = struct.unpack(">IIBB", ihdr[:10])
    icc = None
    if b"iCCP" in chunks:  # profile name, NUL, compression method (0 = zlib), compressed profile
        name_end = chunks[b"iCCP"].find(b"\x00")
        with contextlib.suppress(zlib.error):
            icc = zlib.decompress(chunks[b"iCCP"][name_end + 2 :]) if name_end >= 0 else None
    orientation = _exif_orientation(chunks.get(b"eXIf"))
    frames = struct.unpack(">I", chunks[b"acTL"][:4])[0] if len(chunks.get(b"acTL", b"")) >= 4 else 1
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color)
    if channels is None:
        raise MaskdnError(f"{path}: truncated or corrupt image (PNG colour type {color})")
    unsupported = None
    if color == 3:
        unsupported = "a palette image"
    elif bits == 1:
        unsupported = "a 1-bit bilevel image"
    elif bits < 8:
        unsupported = f"a {bits}-bit image"
    dtype = np.uint16 if bits == 16 else np.uint8
    decoder = "pypng" if bits == 16 and color in (2, 4, 6) else "pillow"  # beyond Pillow's modes
    return ImageHeader(path, "PNG", (_page(height, width, channels, dtype, orientation, unsupported),), icc,
                       f"an animated PNG ({frames} frames)" if frames > 1 else None, decoder)


_TIFF_KINDS = {"PALETTE": "a palette image", "SEPARATED": "a CMYK image", "CIELAB": "a CIELAB image",
               "ICCLAB": "a CIELAB image", "ITULAB": "a CIELAB image", "LOGL": "a LogL image",
               "LOGLUV": "a LogLuv image", "CFA": "a raw colour-filter-array image"}


def _probe_tiff_page(path: Path, page) -> PageHeader:
    import tifffile

    photometric = tifffile.PHOTOMETRIC(page.photometric)
    spp, bits = page.samplesperpixel, page.bitspersample
    orientation = _orientation(page.tags.valueof(274, 1))
    height, width = page.imagelength, page.imagewidth
    if getattr(page, "imagedepth", 1) > 1:
        raise MaskdnError(f"{path}: unsupported TIFF layout (a volume of {page.imagedepth} slices per page)")
    if photometric.name in ("MINISBLACK", "MINISWHITE", "RGB", "YCBCR"):
        if not 1 <= spp <= 4:
            raise MaskdnError(f"{path}: unsupported TIFF layout ({spp} samples per pixel; need gray, RGB or RGBA)")
        channels = spp
    else:
        channels = 3
    fmt = tifffile.SAMPLEFORMAT(page.sampleformat).name
    unsupported = _TIFF_KINDS.get(photometric.name)
    if bits == 1:
        dtype, unsupported = np.uint8, "a 1-bit bilevel image"
        channels = 1
    elif fmt == "IEEEFP":
        if bits not in (16, 32, 64):
            raise MaskdnError(f"{path}: unsupported TIFF sample type ({bits}-bit float)")
        dtype = np.dtype(f"float{bits}")
    elif fmt == "UINT":
        if bits > 16:
            raise MaskdnError(f"{path}: unsupported TIFF sample type ({bits}-bit integer; need 8 or 16 bits)")
        dtype = np.uint8 if bits <= 8 else np.uint16
        if bits not in (8, 16) and unsupported is None:
            unsupported = f"a {bits}-bit image"
    else:
        raise MaskdnError(f"{path}: unsupported TIFF sample type ({bits}-bit {fmt.lower()}; need 8- or 16-bit "
                          "unsigned integers or floats)")
    if unsupported is None and photometric.name == "MINISWHITE" and bits != 8:
        unsupported = f"a {bits}-bit min-is-white image"
    return _page(height, width, channels, dtype, orientation, unsupported)


def _probe_tiff(path: Path) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = tuple(_probe_tiff_page(path, tf.pages[i]) for i in range(len(tf.pages)))
        icc = tf.pages.first.tags.valueof(34675) if pages else None
    if not pages:
        raise MaskdnError(f"{path}: truncated or corrupt image (a TIFF without pages)")
    return ImageHeader(path, "TIFF", pages, bytes(icc) if icc else None, None, "tifffile")


def _probe_pillow(path: Path) -> ImageHeader:
    with _pillow_unlimited(), Image.open(path) as im:
        width, height = im.size
        mode, fmt = im.mode, im.format or "image"
        frames = 1 if fmt == "MPO" else getattr(im, "n_frames", 1)  # an MPO's further frames are previews
        icc = im.info.get("icc_profile") or None
        orientation = _orientation(im.getexif().get(0x0112, 1))
    if mode not in _MODES:
        raise MaskdnError(f"{path}: unsupported image mode {mode}")
    channels, dtype, unsupported = _MODES[mode]
    if mode == "P" and "transparency" in im.info:
        channels = 4
    animated = f"an animated image ({frames} frames)" if frames > 1 else None
    return ImageHeader(path, fmt, (_page(height, width, channels, dtype, orientation, unsupported),), icc, animated)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Every failure of the decoders as one line naming the file."""
    try:
        yield
    except MaskdnError:
        raise
    except UnidentifiedImageError:
        raise MaskdnError(f"{path}: not an image or an unsupported format") from None
    except Image.DecompressionBombError as e:
        raise MaskdnError(f"{path}: image too large ({first_line(e)})") from None
    except MemoryError:
        raise MaskdnError(f"{path}: not enough memory to read the image") from None
    except PermissionError:
        raise MaskdnError(f"{path}: permission denied") from None
    except Exception as e:  # truncated data, bad chunks, decoder errors from Pillow, pypng or tifffile
        raise MaskdnError(f"{path}: truncated or corrupt image ({first_line(e)})") from None


def probe_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read an image's header: size, pages, channels, sample type, orientation and colour profile.

    Nothing is decoded, so a decompression bomb (a small file claiming a huge size, at any bit depth
    and through any reader) is refused here at no cost. The format is detected from the content: TIFF
    through ``tifffile``'s IFD parser, PNG by its chunks, everything else by Pillow's lazy open.

    Args:
        path: The image file.
        max_pixels: The most pixels (width × height) any page may have; None: no limit. The default,
            :data:`DEFAULT_MAX_PIXELS`, is Pillow's.

    Returns:
        The :class:`ImageHeader`.

    Raises:
        ImageTooLarge: A page over ``max_pixels`` (a :class:`MaskdnError`).
        MaskdnError: A one-line message naming the file, for a missing, empty, folder or unreadable
            path, a non-image or unsupported format, mode, layout or sample type, or a corrupt header.
    """
    path = Path(path)
    head = check_file(path)
    with _reading(path):
        if head.startswith(_TIFF_MAGIC):
            header = _probe_tiff(path)
        elif head.startswith(_PNG_MAGIC):
            header = _probe_png(path)
        else:
            header = _probe_pillow(path)
    if max_pixels is not None:
        for p in header.pages:
            if p.width * p.height > max_pixels:
                raise ImageTooLarge(path, p.width, p.height, max_pixels)
    return header


def _from_pil(im: Image.Image, path: Path) -> np.ndarray:
    """A loaded PIL image → native array (palette, bilevel, CMYK and the like become gray/RGB/RGBA)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "1":
        im = im.convert("L")  # bilevel → 0 / 255
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)  # native byte order
    if im.mode == "I":  # 32-bit integer gray
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise MaskdnError(f"{path}: unsupported 32-bit integer image")
        return a.astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise MaskdnError(f"{path}: unsupported image mode {mode}")
    return np.asarray(im)


def _read_pil(path: Path, page: int) -> np.ndarray:
    with _pillow_unlimited(), Image.open(path) as im:
        if page:
            im.seek(page)
        im.load()  # decode fully now so truncation is caught here (LOAD_TRUNCATED_IMAGES stays False)
        return _from_pil(im, path)


def _read_png16(path: Path) -> np.ndarray:
    """16-bit gray+alpha, RGB or RGBA PNG (beyond Pillow's modes), as stored: no sBIT or tRNS processing."""
    import png

    width, height, rows, info = png.Reader(filename=str(path)).read()
    planes = info["planes"]
    a = np.empty((height, width * planes), np.uint16)  # filled row by row: the peak is the image itself
    for i, row in enumerate(rows):
        a[i] = row
    a = a.reshape(height, width, planes)
    return a[..., 0] if planes == 1 else a


def _read_tiff(path: Path, index: int) -> np.ndarray | None:
    """One TIFF page via tifffile, or None when Pillow should decode it instead."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[index]
        color16 = page.bitspersample > 8 and page.samplesperpixel > 1
        simple = page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
        if not simple or page.bitspersample == 1:  # palette, CMYK, YCbCr, min-is-white, bilevel
            if color16:
                raise MaskdnError(f"{path}: unsupported 16-bit {page.photometric.name} TIFF")
            return None
        try:
            a = page.asarray()
        except ValueError as e:
            if "imagecodecs" not in str(e):
                raise
            if color16 or page.sampleformat == tifffile.SAMPLEFORMAT.IEEEFP:  # Pillow: 8 bits, or no float
                raise MaskdnError(f"{path}: cannot decode {page.bitspersample}-bit {page.compression.name} TIFF"
                                  " (pip install imagecodecs)") from None
            return None
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and a.ndim == 3:
            a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise MaskdnError(f"{path}: unsupported TIFF layout {a.shape} (need gray, RGB or RGBA)")
    if a.dtype.kind != "f" and a.dtype not in (np.uint8, np.uint16):
        raise MaskdnError(f"{path}: unsupported TIFF sample type {a.dtype}")
    return a


def read_page(header: ImageHeader, page: int = 0) -> np.ndarray:
    """Decode page ``page`` of the image that ``header`` (from :func:`probe_image`) describes.

    Args:
        header: The image's header; its pixel limit was checked when it was made.
        page: The page index, ``0 <= page < len(header.pages)``.

    Returns:
        The page as displayed (orientation applied) in its native sample type, as :func:`read_image`.

    Raises:
        MaskdnError: A one-line message naming the file: a page index out of range, an unsupported
            layout or sample type, running out of memory, or truncated or corrupt data.
    """
    path = header.path
    if not 0 <= page < len(header.pages):
        raise MaskdnError(f"{path}: no page {page} (it has {len(header.pages)})")
    with _reading(path):
        a = None
        if header._decoder == "tifffile":
            a = _read_tiff(path, page)
        elif header._decoder == "pypng":
            a = _read_png16(path)
        if a is None:
            a = _read_pil(path, page)
        a = orient(a, header.pages[page].orientation)
    return a


def read_image(path: str | os.PathLike, *, page: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one page of the image at ``path`` in its native dtype and layout (see the module docstring).

    The header is read first (:func:`probe_image`), so an image over ``max_pixels`` is refused before
    any decoding, whatever the reader and bit depth. The format is detected from the file's content:
    TIFF through ``tifffile`` (through Pillow for palette, CMYK, YCbCr, min-is-white and bilevel TIFFs,
    and 8-bit ones whose codec needs ``imagecodecs``), 16-bit colour or gray+alpha PNG through
    ``pypng``, everything else through Pillow. The EXIF/TIFF orientation is applied (:func:`orient`).

    Args:
        path: The image file.
        page: Which page of a multi-page TIFF (0: the first; other formats have one).
        max_pixels: The most pixels (width × height) accepted; None: no limit.

    Returns:
        ``[H, W]`` (gray), ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA),
        as stored: uint8 (0–255) or uint16 (0–65535); float TIFFs as float16/float32/float64 and Pillow
        mode ``F`` as float32, unscaled. Palette images come back as RGB or RGBA, bilevel as gray 0/255,
        CMYK as RGB (:attr:`PageHeader.unsupported` says so).

    Raises:
        ImageTooLarge: A page over ``max_pixels``.
        MaskdnError: A one-line message naming the file, for a missing, empty, folder or unreadable
            path, a non-image or unsupported format, mode, layout or sample type, a page that does not
            exist, running out of memory, or truncated or corrupt data.
    """
    return read_page(probe_image(path, max_pixels=max_pixels), page)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def make_output_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) for outputs; an existing folder is fine.

    Args:
        folder: The folder to create.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: ``"<folder>: cannot create the output folder (<reason>)"`` on any ``OSError``
            (permission denied, a file in the way, ...).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaskdnError(f"{folder}: cannot create the output folder ({e.strerror or type(e).__name__})") from None
    return folder


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")
"""Names of :func:`atomic_write`'s temporary files: ``.<stem>.<8 hex digits>.tmp<suffix>``."""


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_write` (readers skip those).

    Args:
        path: Any path; only its final component is looked at, the file need not exist.

    Returns:
        True for names ``.<stem>.<8 hex digits>.tmp<suffix>``.
    """
    return bool(_TEMP_NAME.match(Path(path).name))


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files an interrupted earlier write of ``path`` left beside it (e.g. after SIGKILL)."""
    with contextlib.suppress(OSError):
        for old in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
            if re.fullmatch(r"[0-9a-f]{8}", old.name[len(path.stem) + 2 : -len(f".tmp{path.suffix}")]):
                old.unlink(missing_ok=True)


def _create_temp(path: Path) -> Path:
    """A new empty file beside ``path``; created with mode 0o666 so the umask applies as usual."""
    _remove_stale_temps(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path.name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success fsync it and rename it onto ``path``.

    The temporary file, ``.<stem>.<8 hex digits>.tmp<suffix>`` in ``path``'s folder, is created empty
    (mode 0o666 less the umask) for the block to write. When the block returns, the file is fsynced,
    renamed onto ``path`` with :func:`os.replace` (atomic within one file system), and the folder is
    fsynced (POSIX) so the rename survives a crash. Readers never see a half-written file.

    Args:
        path: The destination; its folder must exist.

    Yields:
        The temporary :class:`~pathlib.Path` to write.

    Raises:
        MaskdnError: ``"<path>: cannot write (folder <parent> does not exist)"``, or
            ``"<path>: cannot write (<reason>)"`` when creating, syncing or renaming the temporary
            file, or the block itself, raises an ``OSError`` (disk full, permission denied, ...).
            Other exceptions from the block propagate unchanged. On any failure the temporary file
            is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise MaskdnError(f"{path}: cannot write (folder {path.parent} does not exist)")
    try:
        tmp = _create_temp(path)
    except OSError as e:
        raise MaskdnError(f"{path}: cannot write ({_os_reason(e)})") from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise MaskdnError(f"{path}: cannot write ({_os_reason(e)})") from None
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename itself durable (POSIX only)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class _Format:
    name: str
    dtypes: tuple[str, ...]
    channels: tuple[int, ...]
    multipage: bool
    icc: bool


_FORMATS = {
    ".png": _Format("PNG", ("uint8", "uint16"), (1, 2, 3, 4), False, True),
    ".tif": _Format("TIFF", ("uint8", "uint16", "float16", "float32", "float64"), (1, 2, 3, 4), True, True),
    ".jpg": _Format("JPEG", ("uint8",), (1, 3), False, True),
    ".bmp": _Format("BMP", ("uint8",), (1, 3), False, False),
    ".webp": _Format("WebP", ("uint8",), (3, 4), False, True),
}
_FORMATS[".tiff"], _FORMATS[".jpeg"] = _FORMATS[".tif"], _FORMATS[".jpg"]


def _format_of(path: Path) -> _Format:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise MaskdnError(f"{path}: unknown image suffix (use one of {' '.join(IMAGE_SUFFIXES)})")
    return _FORMATS[suffix]


def _storage_problem(fmt: _Format, dtype: np.dtype, channels: int, pages: int, icc: bool) -> str | None:
    """Why ``fmt`` cannot store such an image as it is, or None when it can."""
    dtype = np.dtype(dtype)
    if dtype.name not in fmt.dtypes:
        if dtype.kind not in "uf" or dtype.name not in _FORMATS[".tif"].dtypes:
            return f"cannot write {dtype} pixels (use uint8, uint16 or float)"
        if dtype.kind == "f":
            return f"{fmt.name} cannot store {dtype.name} images, use .tif"
        return f"{fmt.name} cannot store 16-bit images, use .png or .tif"
    if channels not in fmt.channels:
        if channels in (2, 4) and channels - 1 in fmt.channels:
            return f"{fmt.name} cannot store an alpha channel, use .png or .tif"
        return f"{fmt.name} cannot store gray images, use .png or .tif"
    if pages > 1 and not fmt.multipage:
        return f"{fmt.name} cannot store {pages} pages, use .tif"
    if icc and not fmt.icc:
        return f"{fmt.name} cannot store the input's colour profile (ICC), use .png, .tif, .jpg or .webp"
    return None


def check_writable(path: str | os.PathLike, header: ImageHeader) -> None:
    """Raise unless ``path`` can receive the image ``header`` describes in its own mode, depth and pages.

    The check before any work: a denoised copy of the image, written to ``path``, must come back in the
    input's mode (gray, gray + alpha, RGB, RGBA), bit depth, sample type, page count and colour profile.
    So images that reading converts (palette, bilevel, CMYK, premultiplied alpha, bit depths other
    than 8, 16 or float), animations, and outputs whose format cannot hold the input (16 bits or float
    in JPEG, alpha in BMP, several pages outside TIFF, a profile in BMP) are refused.

    Args:
        path: The output file; its suffix (case-insensitive) chooses the format.
        header: The input's header (:func:`probe_image`).

    Raises:
        MaskdnError: ``"<input>: <what it is>; <what to do>"`` when the input cannot be written back as
            it is, or ``"<path>: <format> cannot store ..."`` when the output's format cannot hold it.
    """
    path = Path(path)
    fmt = _format_of(path)
    reasons = [header.unsupported] + [p.unsupported for p in header.pages]
    reason = next((r for r in reasons if r), None)
    if reason:
        raise MaskdnError(f"{header.path}: {reason}, which would not come back as it is; {_ROUND_TRIP_HELP}")
    for p in header.pages:
        problem = _storage_problem(fmt, p.dtype, p.channels, len(header.pages), header.icc_profile is not None)
        if problem:
            raise MaskdnError(f"{path}: {problem}")


def _insert_png_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """``data`` (a PNG) with a chunk inserted right after IHDR (where iCCP must go: before PLTE and IDAT)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    end_of_ihdr = 8 + 8 + 13 + 4
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def _write_png16(tmp: Path, a: np.ndarray, icc: bytes | None) -> None:
    import png

    h, w = a.shape[:2]
    planes = 1 if a.ndim == 2 else a.shape[2]
    writer = png.Writer(w, h, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16)
    buf = BytesIO()
    writer.write(buf, iter(a.reshape(h, w * planes)))
    data = buf.getvalue()
    if icc:
        data = _insert_png_chunk(data, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    tmp.write_bytes(data)


def _write_tiff(tmp: Path, pages: list[np.ndarray], icc: bytes | None) -> None:
    import tifffile

    with tifffile.TiffWriter(tmp) as tw:
        for a in pages:
            channels = 1 if a.ndim == 2 else a.shape[2]
            tw.write(a, photometric="minisblack" if channels <= 2 else "rgb", planarconfig="contig",
                     extrasamples=("unassalpha",) if channels in (2, 4) else None, compression="zlib",
                     iccprofile=icc)


def _check_array(path: Path, fmt: _Format, array: np.ndarray, pages: int, icc: bool) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or 0 in a.shape:
        raise MaskdnError(f"{path}: cannot write an array of shape {a.shape}")
    problem = _storage_problem(fmt, a.dtype, 1 if a.ndim == 2 else a.shape[2], pages, icc)
    if problem:
        raise MaskdnError(f"{path}: {problem}")
    return np.ascontiguousarray(a)


def write_pages(
    path: str | os.PathLike, pages: Sequence[np.ndarray], *, overwrite: bool = True, icc_profile: bytes | None = None
) -> Path:
    """Write one or more pages (several only to TIFF), format by suffix, atomically.

    PNG (16-bit through ``pypng``) stores gray, gray + alpha, RGB and RGBA at 8 and 16 bits; TIFF
    (``tifffile``, deflate-compressed, one IFD per page) the same plus float16/32/64; JPEG (Pillow,
    quality 95) 8-bit gray or RGB; BMP 8-bit gray or RGB; WebP (Pillow, lossless) 8-bit RGB or RGBA.
    ``icc_profile`` is embedded (every TIFF page; PNG ``iCCP``; JPEG; WebP). The file is written through
    :func:`atomic_write`, so ``path`` is never left half-written.

    Args:
        path: The output file; its suffix (case-insensitive) is one of :data:`IMAGE_SUFFIXES` and its
            folder must exist.
        pages: Arrays ``[H, W]``, ``[H, W, 1]`` (written as gray), ``[H, W, 2]`` (gray + alpha),
            ``[H, W, 3]`` or ``[H, W, 4]``: uint8 (0–255), uint16 (0–65535) or, for TIFF, float (written
            unscaled); no axis of size 0.
        overwrite: If False, an existing ``path`` is an error.
        icc_profile: An ICC colour profile to embed (raw bytes), or None.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: A one-line message naming ``path``: unknown suffix, no pages, an unsupported shape
            or dtype, what the format cannot store (16 bits, float, alpha, gray, several pages, a
            profile), ``path`` exists and ``overwrite`` is False, missing folder, or an encoder error
            or ``OSError`` while writing.
    """
    path = Path(path)
    fmt = _format_of(path)
    if not len(pages):
        raise MaskdnError(f"{path}: no pages to write")
    arrays = [_check_array(path, fmt, a, len(pages), icc_profile is not None) for a in pages]
    if not overwrite and path.exists():
        raise MaskdnError(f"{path}: exists, refusing to overwrite")
    icc = {"icc_profile": icc_profile} if icc_profile else {}
    a = arrays[0]
    try:
        with atomic_write(path) as tmp:
            if fmt.name == "TIFF":
                _write_tiff(tmp, arrays, icc_profile)
            elif fmt.name == "PNG" and a.dtype == np.uint16:
                _write_png16(tmp, a, icc_profile)
            elif fmt.name == "PNG":
                Image.fromarray(a).save(tmp, format="PNG", **icc)
            elif fmt.name == "BMP":
                Image.fromarray(a).save(tmp, format="BMP")
            elif fmt.name == "WebP":
                Image.fromarray(a).save(tmp, format="WEBP", lossless=True, exact=True, **icc)
            else:
                Image.fromarray(a).save(tmp, format="JPEG", quality=95, **icc)
    except MaskdnError:
        raise
    except Exception as e:  # encoder errors; OSErrors are already turned into MaskdnError by atomic_write
        raise MaskdnError(f"{path}: cannot write ({first_line(e)})") from None
    return path


def write_image(
    path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True, icc_profile: bytes | None = None
) -> Path:
    """Write one image, format by suffix, atomically: :func:`write_pages` with one page.

    Args:
        path: The output file (see :func:`write_pages`).
        array: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]``, ``[H, W, 3]`` or ``[H, W, 4]``; uint8, uint16
            or (TIFF only) float.
        overwrite: If False, an existing ``path`` is an error.
        icc_profile: An ICC colour profile to embed, or None.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: As :func:`write_pages`.
    """
    return write_pages(path, [array], overwrite=overwrite, icc_profile=icc_profile)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not is_temp_file(p)


def _expand_one(spec: str | os.PathLike) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if _is_image_file(q))
        if not found:
            raise MaskdnError(f"{p}: no images ({' '.join(IMAGE_SUFFIXES)})")
        return found
    if p.exists():
        return [p]  # named explicitly: kept whatever its suffix; read_image says what is wrong
    found = sorted(Path(m) for m in glob.glob(os.fspath(spec), recursive=True) if _is_image_file(Path(m)))
    if not found:
        raise MaskdnError(f"{spec}: no such file, folder or matching images")
    return found


def expand_inputs(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, sorted, non-recursive) and glob patterns (``**`` recursive) → paths.

    A folder gives its files with an image suffix (:data:`IMAGE_SUFFIXES`), sorted by name; an
    existing file is kept whatever its suffix (:func:`read_image` judges it); anything else is a
    :mod:`glob` pattern, giving the matching files with an image suffix, sorted.

    Args:
        specs: Files, folders and glob patterns, as ``str`` or path-like.

    Returns:
        The paths, in the order of ``specs``, each file once (compared by resolved path; the first
        occurrence is kept).

    Raises:
        MaskdnError: ``"<spec>: no images (...)"`` for a folder without images,
            ``"<spec>: no such file, folder or matching images"`` for a spec that matches nothing,
            or ``"<spec>: cannot list (<reason>)"`` on an ``OSError`` while listing.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        try:
            found = _expand_one(spec)
        except OSError as e:
            raise MaskdnError(f"{spec}: cannot list ({_os_reason(e)})") from None
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


# --------------------------------------------------------------------------------------------------
# Native array ↔ float RGB tensor
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImageInfo:
    """What :func:`from_float_rgb` needs to rebuild the native array from the model's output.

    Made by :func:`to_float_rgb`.

    Attributes:
        dtype: The native dtype: uint8 (scaled by 1/255), uint16 (by 1/65535) or a float type.
        shape: The original layout: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)``, ``(H, W, 3)`` or ``(H, W, 4)``.
        alpha: The ``[H, W]`` alpha channel in the native dtype, set aside untouched; None without one.
        low: The native value that 0 stands for: 0 for integers and for floats within [0, 1], else the
            smallest finite value.
        high: The native value that 1 stands for: 255, 65535, 1, or the largest finite value of a float
            image that exceeds 1.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    alpha: np.ndarray | None
    low: float = 0.0
    high: float = 1.0

    @property
    def gray(self) -> bool:
        """Whether the original image was gray: shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 2)`` (gray + alpha)."""
        return len(self.shape) == 2 or self.shape[2] in (1, 2)


_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_float_rgb(array: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    """Native ``HxW`` / ``HxWx1`` / ``HxWx2`` / ``HxWx3`` / ``HxWx4`` array → float32 ``[3, H, W]`` and its info.

    Integers are scaled to [0, 1] (÷255 or ÷65535). Floats within [0, 1] are taken as they are; a float
    image with values outside [0, 1] (HDR, 0–255 or 0–65535 data, negative values) is mapped linearly
    from ``[min(0, lowest), max(1, highest)]`` (finite values) onto [0, 1], the range the model was
    trained on, and :func:`from_float_rgb` maps it back. Gray is replicated to three channels; an alpha
    channel (the last of 2 or 4) is set aside untouched in the info (the model sees RGB only).

    Args:
        array: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` or ``[H, W, 4]``
            (RGBA); uint8, uint16 or any float dtype.

    Returns:
        ``(x, info)``: ``x`` a contiguous float32 CPU tensor ``[3, H, W]`` (values in [0, 1] for finite
        inputs), and the :class:`ImageInfo` that :func:`from_float_rgb` needs to go back.

    Raises:
        MaskdnError: ``"expected an image HxW, HxWx1, HxWx2, HxWx3 or HxWx4, got shape ..."`` or
            ``"unsupported pixel type ... (use uint8, uint16 or float)"``.
    """
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise MaskdnError(f"expected an image HxW, HxWx1, HxWx2, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype not in _SCALE and a.dtype.kind != "f":
        raise MaskdnError(f"unsupported pixel type {a.dtype} (use uint8, uint16 or float)")
    shape = a.shape
    alpha = None
    if a.ndim == 3 and a.shape[2] in (2, 4):
        alpha, a = a[..., -1].copy(), a[..., :-1]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    low, high = 0.0, 1.0
    if a.dtype in _SCALE:
        high = _SCALE[a.dtype]
        x = torch.from_numpy(a.astype(np.float32) / np.float32(high))
    else:
        finite = a[np.isfinite(a)]
        if finite.size:
            low, high = min(0.0, float(finite.min())), max(1.0, float(finite.max()))
        x = torch.from_numpy(a.astype(np.float32))
        if (low, high) != (0.0, 1.0):
            x = (x.double() - low).div_(high - low).float()
    x = x[None].expand(3, -1, -1).contiguous() if a.ndim == 2 else x.permute(2, 0, 1).contiguous()
    return x, ImageInfo(a.dtype, shape, alpha, low, high)


def from_float_rgb(tensor: torch.Tensor, info: ImageInfo) -> np.ndarray:
    """Float ``[3, H, W]`` → the native layout and dtype described by ``info`` (inverse of :func:`to_float_rgb`).

    Gray is the mean of the three channels. Values are clamped to [0, 1], i.e. to the input's own range
    ``[info.low, info.high]``, and mapped back onto it; integers are rounded to nearest (``np.rint``,
    ties to even). Floats come back as float32 (the caller casts to the native float type). The alpha
    set aside is appended, cast to the output dtype.

    Args:
        tensor: ``[3, H, W]`` tensor, any float dtype and device (copied to the CPU as float32).
        info: The :class:`ImageInfo` returned by :func:`to_float_rgb`.

    Returns:
        An array of shape ``info.shape``: dtype ``info.dtype`` for uint8/uint16, else float32.

    Raises:
        MaskdnError: If ``tensor`` is not ``[3, H, W]`` with ``info``'s ``H`` and ``W``.
    """
    h, w = info.shape[:2]
    if tuple(tensor.shape) != (3, h, w):
        raise MaskdnError(f"expected a tensor of shape (3, {h}, {w}), got {tuple(tensor.shape)}")
    x = tensor.detach().to("cpu", torch.float32)
    x = x.mean(dim=0) if info.gray else x.permute(1, 2, 0)
    a = np.clip(x.numpy(), 0.0, 1.0)
    if info.dtype in _SCALE:
        a = np.rint(a * np.float32(_SCALE[info.dtype])).astype(info.dtype)
        out_dtype = info.dtype
    else:
        if (info.low, info.high) != (0.0, 1.0):
            a = np.clip(a.astype(np.float64) * (info.high - info.low) + info.low, info.low, info.high)
        a = a.astype(np.float32)
        out_dtype = np.dtype(np.float32)
    if info.alpha is not None:
        a = np.concatenate([a.reshape(h, w, -1), info.alpha.astype(out_dtype)[..., None]], axis=2)
    return a.reshape(info.shape)
