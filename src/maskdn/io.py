"""Image I/O for denoising: native bit depths kept, atomic writes, one-line errors.

* :func:`read_image` returns an image as stored: ``HxW`` (gray) or ``HxWx3`` / ``HxWx4`` (RGB / RGBA),
  uint8 or uint16; float TIFFs come back as float32, unscaled. Pillow cannot hold 16-bit color, so
  16-bit color PNGs are read with ``pypng`` and TIFFs with ``tifffile`` (Pillow for the rest). Palette
  images become RGB or RGBA, gray+alpha becomes RGBA (gray replicated), bilevel becomes gray 0/255,
  CMYK becomes RGB; EXIF orientation is applied; a multi-page TIFF gives its first page.
* :func:`write_image` and :func:`atomic_write` write to a temporary file beside the target and rename
  it over the target, so a failed or interrupted write never leaves a half-written output.
* :func:`expand_inputs` turns command-line files, folders and glob patterns into a list of images.
* :func:`to_float_rgb` / :func:`from_float_rgb` convert between the native form and the float RGB
  tensor the color model takes, remembering what is needed to go back exactly (gray, alpha, dtype).

Every problem a user can cause is a :class:`MaskdnError` whose one-line message names the file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MaskdnError, first_line

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "atomic_write",
    "check_file",
    "expand_inputs",
    "from_float_rgb",
    "make_output_dir",
    "read_image",
    "to_float_rgb",
    "write_image",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""Suffixes read and written (compared case-insensitively)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _os_reason(e: OSError) -> str:
    return e.strerror or first_line(e)


# --------------------------------------------------------------------------------------------------
# Reading
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


def _from_pil(im: Image.Image, path: Path) -> np.ndarray:
    """A loaded PIL image → native array (palette, LA, bilevel and CMYK become gray/RGB/RGBA)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")  # gray + alpha: gray replicated to RGB, alpha kept
    elif mode == "1":
        im = im.convert("L")  # bilevel → 0 / 255
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)  # native byte order
    if im.mode == "I":  # 32-bit integer gray; some decoders use it for 16-bit gray
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise MaskdnError(f"{path}: unsupported 32-bit integer image")
        return a.astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode not in ("L", "RGB", "RGBA"):
        raise MaskdnError(f"{path}: unsupported image mode {mode}")
    return np.asarray(im)


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # decode fully now so truncation is caught here (LOAD_TRUNCATED_IMAGES stays False)
        if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation tag (JPEG, also PNG/TIFF/WebP)
            im = ImageOps.exif_transpose(im)
        return _from_pil(im, path)


def _read_png16_color(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    if planes == 2:  # gray + alpha → RGBA
        a = np.concatenate([a[..., :1].repeat(3, axis=2), a[..., 1:]], axis=2)
    return a[..., 0] if planes == 1 else a


def _read_tiff(path: Path) -> np.ndarray | None:
    """A TIFF's first page via tifffile, or None when Pillow should decode it instead."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
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
            if color16:  # Pillow would silently drop to 8 bits
                raise MaskdnError(f"{path}: cannot decode 16-bit color {page.compression.name} TIFF"
                                  " (pip install imagecodecs)") from None
            return None
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and a.ndim == 3:
            a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] == 2:  # gray + alpha → RGBA
        a = np.concatenate([a[..., :1].repeat(3, axis=2), a[..., 1:]], axis=2)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MaskdnError(f"{path}: unsupported TIFF layout {a.shape} (need gray, RGB or RGBA)")
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype not in (np.uint8, np.uint16):
        raise MaskdnError(f"{path}: unsupported TIFF sample type {a.dtype}")
    return a


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read the image at ``path`` in its native dtype and layout (see the module docstring).

    The format is detected from the file's content, not its suffix: TIFF through ``tifffile`` (through
    Pillow for palette, CMYK, YCbCr, min-is-white and bilevel TIFFs, and 8-bit ones whose codec needs
    ``imagecodecs``), 16-bit colour or gray+alpha PNG through ``pypng``, everything else through
    Pillow. EXIF orientation is applied; a multi-page TIFF gives its first page.

    Args:
        path: The image file.

    Returns:
        ``[H, W]`` (gray), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA) array as stored: uint8 (0–255) or
        uint16 (0–65535); float images (float TIFFs, Pillow mode ``F``) as float32, unscaled.

    Raises:
        MaskdnError: A one-line message naming the file, for a missing, empty, folder or unreadable
            path, a non-image or unsupported format, mode, layout or sample type, an image over
            Pillow's decompression-bomb limit, running out of memory, or truncated or corrupt data.
    """
    path = Path(path)
    head = check_file(path)
    try:
        if head.startswith(_TIFF_MAGIC):
            a = _read_tiff(path)
            if a is not None:
                return a
        elif head.startswith(_PNG_MAGIC) and len(head) >= 26 and head[24] == 16 and head[25] in (2, 4, 6):
            return _read_png16_color(path)  # 16-bit RGB, gray+alpha or RGBA: beyond Pillow
        return _read_pil(path)
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


def _write_png16(tmp: Path, a: np.ndarray) -> None:
    import png

    h, w = a.shape[:2]
    planes = 1 if a.ndim == 2 else a.shape[2]
    writer = png.Writer(w, h, greyscale=planes == 1, alpha=planes == 4, bitdepth=16)
    with open(tmp, "wb") as f:
        writer.write(f, iter(a.reshape(h, w * planes)))


def write_image(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a uint8/uint16 ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` array, format by suffix, atomically.

    PNG (16-bit through ``pypng``) and TIFF (``tifffile``, deflate-compressed) store gray, RGB and
    RGBA at 8 and 16 bits; JPEG (Pillow, quality 95) and BMP store 8-bit gray or RGB only. The file is
    written through :func:`atomic_write`, so ``path`` is never left half-written.

    Args:
        path: The output file; its suffix (case-insensitive) is one of :data:`IMAGE_SUFFIXES` and its
            folder must exist.
        array: ``[H, W]``, ``[H, W, 1]`` (written as gray), ``[H, W, 3]`` or ``[H, W, 4]``, uint8
            (0–255) or uint16 (0–65535), no axis of size 0.
        overwrite: If False, an existing ``path`` is an error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: A one-line message naming ``path``: unknown suffix, unsupported shape or dtype,
            16 bits or alpha for JPEG/BMP, ``path`` exists and ``overwrite`` is False, missing
            folder, or an encoder error or ``OSError`` while writing.
    """
    path = Path(path)
    a = np.asarray(array)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise MaskdnError(f"{path}: unknown image suffix (use one of {' '.join(IMAGE_SUFFIXES)})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise MaskdnError(f"{path}: cannot write an array of shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise MaskdnError(f"{path}: cannot write {a.dtype} pixels (convert to uint8 or uint16)")
    if suffix in (".jpg", ".jpeg", ".bmp"):
        kind = "BMP" if suffix == ".bmp" else "JPEG"
        if a.dtype == np.uint16:
            raise MaskdnError(f"{path}: {kind} cannot store 16-bit images, use .png or .tif")
        if a.ndim == 3 and a.shape[2] == 4:
            raise MaskdnError(f"{path}: {kind} cannot store an alpha channel, use .png or .tif")
    if not overwrite and path.exists():
        raise MaskdnError(f"{path}: exists, refusing to overwrite")
    a = np.ascontiguousarray(a)
    try:
        with atomic_write(path) as tmp:
            if suffix in (".tif", ".tiff"):
                import tifffile

                photometric = "minisblack" if a.ndim == 2 else "rgb"
                tifffile.imwrite(tmp, a, photometric=photometric, compression="zlib")
            elif suffix == ".png" and a.dtype == np.uint16:
                _write_png16(tmp, a)
            elif suffix == ".png":
                Image.fromarray(a).save(tmp, format="PNG")
            elif suffix == ".bmp":
                Image.fromarray(a).save(tmp, format="BMP")
            else:
                Image.fromarray(a).save(tmp, format="JPEG", quality=95)
    except MaskdnError:
        raise
    except Exception as e:  # encoder errors; OSErrors are already turned into MaskdnError by atomic_write
        raise MaskdnError(f"{path}: cannot write ({first_line(e)})") from None
    return path


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
        dtype: The native dtype: uint8 (scaled by 1/255), uint16 (by 1/65535) or a float type (unscaled).
        shape: The original layout: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
        alpha: The ``[H, W]`` alpha channel in the native dtype, set aside untouched; None without one.
        clamp: Whether to clamp the output to [0, 1]: integer input, or float input that lay in [0, 1].
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    alpha: np.ndarray | None
    clamp: bool

    @property
    def gray(self) -> bool:
        """Whether the original image was gray: shape ``(H, W)`` or ``(H, W, 1)``."""
        return len(self.shape) == 2 or self.shape[2] == 1


_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_float_rgb(array: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    """Native ``HxW`` / ``HxWx1`` / ``HxWx3`` / ``HxWx4`` array → float32 ``[3, H, W]`` and its info.

    Integers are scaled to [0, 1] (÷255 or ÷65535); floats are taken as they are (neither scaled nor
    clamped). Gray is replicated to three channels; an alpha channel is set aside untouched in the
    info (the model sees RGB only).

    Args:
        array: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``; uint8, uint16 or any float dtype.

    Returns:
        ``(x, info)``: ``x`` a contiguous float32 CPU tensor ``[3, H, W]``, and the :class:`ImageInfo`
        that :func:`from_float_rgb` needs to go back.

    Raises:
        MaskdnError: ``"expected an image HxW, HxWx1, HxWx3 or HxWx4, got shape ..."`` or
            ``"unsupported pixel type ... (use uint8, uint16 or float)"``.
    """
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise MaskdnError(f"expected an image HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype not in _SCALE and a.dtype.kind != "f":
        raise MaskdnError(f"unsupported pixel type {a.dtype} (use uint8, uint16 or float)")
    shape = a.shape
    alpha = None
    if a.ndim == 3 and a.shape[2] == 4:
        alpha, a = a[..., 3].copy(), a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype in _SCALE:
        x = torch.from_numpy(a.astype(np.float32) / np.float32(_SCALE[a.dtype]))
        clamp = True
    else:
        x = torch.from_numpy(a.astype(np.float32))
        clamp = a.size == 0 or bool(np.nanmin(a) >= 0.0 and np.nanmax(a) <= 1.0)
    x = x[None].expand(3, -1, -1).contiguous() if a.ndim == 2 else x.permute(2, 0, 1).contiguous()
    return x, ImageInfo(a.dtype, shape, alpha, clamp)


def from_float_rgb(tensor: torch.Tensor, info: ImageInfo) -> np.ndarray:
    """Float ``[3, H, W]`` → the native layout and dtype described by ``info`` (inverse of :func:`to_float_rgb`).

    Gray is the mean of the three channels. Integers are clamped to [0, 1], scaled (×255 or ×65535)
    and rounded to nearest (``np.rint``, ties to even); floats come back as float32, clamped to [0, 1]
    only if the input lay in [0, 1] (HDR data is left alone). The alpha set aside is appended,
    cast to the output dtype.

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
    a = x.numpy()
    if info.clamp:
        a = np.clip(a, 0.0, 1.0)
    if info.dtype in _SCALE:
        a = np.rint(a * np.float32(_SCALE[info.dtype])).astype(info.dtype)
        out_dtype = info.dtype
    else:
        a = a.astype(np.float32)
        out_dtype = np.dtype(np.float32)
    if info.alpha is not None:
        a = np.concatenate([a, info.alpha.astype(out_dtype)[..., None]], axis=2)
    return a.reshape(info.shape)
