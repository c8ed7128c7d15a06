"""Image I/O for denoising: native bit depths kept, atomic writes, one-line errors.

* :func:`read_image` returns an image as stored: ``HxW`` (gray) or ``HxWx3`` / ``HxWx4`` (RGB / RGBA),
  uint8 or uint16 (float32 for float TIFFs). Pillow reads 8-bit files and 16-bit gray; it cannot hold
  16-bit color, so 16-bit color PNGs go through ``pypng`` and TIFFs through ``tifffile``.
* :func:`write_image` and :func:`atomic_write` write to a temporary file beside the target and rename
  it, so an interrupted or failed write never leaves a half-written output.
* :func:`to_float_rgb` / :func:`from_float_rgb` convert between that native form and the float RGB
  tensor the color model takes, remembering what is needed to go back exactly (gray, alpha, dtype).

Every problem is a :class:`MaskdnError` whose one-line message names the file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MaskdnError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "atomic_write",
    "expand_inputs",
    "from_float_rgb",
    "read_image",
    "to_float_rgb",
    "write_image",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MaskdnError(f"{path}: no such file")
    if path.is_dir():
        raise MaskdnError(f"{path}: is a folder, not an image")
    if not os.access(path, os.R_OK):
        raise MaskdnError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise MaskdnError(f"{path}: empty file")


def _from_pil(im: Image.Image, path: Path) -> np.ndarray:
    """A loaded PIL image → native array (palette, LA, bilevel and CMYK become gray/RGB/RGBA)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "LA":
        im = im.convert("RGBA")  # gray + alpha: gray replicated to RGB, alpha kept
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "RGBX":
        im = im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":  # 32-bit integer gray (some 16-bit PNGs decode this way)
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise MaskdnError(f"{path}: unsupported 32-bit integer image")
        return a.astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode not in ("L", "RGB", "RGBA"):
        raise MaskdnError(f"{path}: unsupported image mode {mode}")
    return np.asarray(im)


def _png_is_16bit_color(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(33)
    if not head.startswith(_PNG_SIGNATURE) or len(head) < 26:
        return False
    bit_depth, color_type = head[24], head[25]
    return bit_depth == 16 and color_type in (2, 4, 6)  # RGB, gray+alpha, RGBA


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    if planes == 2:  # gray + alpha → RGBA
        a = np.concatenate([a[..., :1].repeat(3, axis=2), a[..., 1:]], axis=2)
    return a


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    a = tifffile.imread(str(path))
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (3, 4):  # planar CHW
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MaskdnError(f"{path}: unsupported TIFF layout {a.shape} (need gray, RGB or RGBA)")
    if a.dtype == np.uint8 or a.dtype == np.uint16 or a.dtype == np.float32:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    raise MaskdnError(f"{path}: unsupported TIFF sample type {a.dtype}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` in its native dtype and layout (see the module docstring).

    JPEG orientation tags are applied. Missing, empty, truncated, corrupt or non-image files raise
    :class:`MaskdnError` naming the file.
    """
    path = Path(path)
    _check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path)
        if _png_is_16bit_color(path):
            return _read_png16(path)
        with Image.open(path) as im:
            im.load()  # decode fully now, so truncation is caught here
            im = ImageOps.exif_transpose(im) if im.format == "JPEG" else im
            return _from_pil(im, path)
    except MaskdnError:
        raise
    except UnidentifiedImageError:
        raise MaskdnError(f"{path}: not an image or an unsupported format") from None
    except PermissionError:
        raise MaskdnError(f"{path}: permission denied") from None
    except Exception as e:  # truncated data, bad chunks, decoder errors from PIL, pypng or tifffile
        raise MaskdnError(f"{path}: truncated or corrupt image ({_reason(e)})") from None


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise MaskdnError(f"{path}: cannot write (folder {path.parent} does not exist)")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        raise MaskdnError(f"{path}: cannot write ({e.strerror or _reason(e)})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_png16(tmp: Path, a: np.ndarray) -> None:
    import png

    h, w = a.shape[:2]
    planes = 1 if a.ndim == 2 else a.shape[2]
    writer = png.Writer(w, h, greyscale=planes == 1, alpha=planes == 4, bitdepth=16)
    with open(tmp, "wb") as f:
        writer.write(f, a.reshape(h, w * planes).tolist())


def write_image(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a uint8/uint16 ``HxW``, ``HxWx3`` or ``HxWx4`` array, by suffix, atomically.

    PNG and TIFF take 8 and 16 bits; JPEG (quality 95) and BMP take 8-bit gray or RGB only.
    """
    path = Path(path)
    a = np.asarray(array)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise MaskdnError(f"{path}: unknown image suffix (use one of {' '.join(IMAGE_SUFFIXES)})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MaskdnError(f"{path}: cannot write an array of shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise MaskdnError(f"{path}: cannot write {a.dtype} pixels (convert to uint8 or uint16)")
    if suffix in (".jpg", ".jpeg", ".bmp"):
        kind = "JPEG" if suffix != ".bmp" else "BMP"
        if a.dtype == np.uint16:
            raise MaskdnError(f"{path}: {kind} cannot store 16-bit images, use .png or .tif")
        if a.ndim == 3 and a.shape[2] == 4:
            raise MaskdnError(f"{path}: {kind} cannot store an alpha channel, use .png or .tif")
    if not overwrite and path.exists():
        raise MaskdnError(f"{path}: exists, refusing to overwrite")
    try:
        with atomic_write(path) as tmp:
            if suffix in (".tif", ".tiff"):
                import tifffile

                tifffile.imwrite(str(tmp), np.ascontiguousarray(a), photometric="minisblack" if a.ndim == 2 else "rgb")
            elif a.dtype == np.uint16 and a.ndim == 3:
                _write_png16(tmp, a)
            elif a.dtype == np.uint16:
                Image.fromarray(a).save(tmp, format="PNG")  # uint16 gray → mode I;16
            elif suffix in (".jpg", ".jpeg"):
                Image.fromarray(a).save(tmp, format="JPEG", quality=95)
            else:
                Image.fromarray(a).save(tmp, format="PNG" if suffix == ".png" else "BMP")
    except MaskdnError:
        raise
    except OSError as e:
        raise MaskdnError(f"{path}: cannot write ({e.strerror or _reason(e)})") from None
    return path


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def expand_inputs(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, non-recursive, sorted) and glob patterns → image paths, deduplicated.

    An explicitly named file is kept whatever its suffix (reading it then says what is wrong).
    """
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise MaskdnError(f"{p}: no images ({' '.join(IMAGE_SUFFIXES)})")
        elif p.exists():
            found = [p]
        else:
            matches = sorted(glob.glob(str(spec), recursive=True))
            found = [Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise MaskdnError(f"{spec}: no such file, folder or matching images")
        out.extend(found)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# --------------------------------------------------------------------------------------------------
# Native array ↔ float RGB tensor
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`from_float_rgb` needs to rebuild the native array."""

    dtype: np.dtype
    gray: bool
    alpha: np.ndarray | None
    unit_range: bool  # float input that lay in [0, 1]: clamp the output to it too


_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_float_rgb(array: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    """Native ``HxW`` / ``HxWx1`` / ``HxWx3`` / ``HxWx4`` array → float32 ``[3, H, W]`` and its info.

    Integers are scaled to [0, 1] (÷255 or ÷65535); floats are taken as they are. Gray is replicated
    to three channels; an alpha channel is set aside untouched.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MaskdnError(f"expected an image HxW, HxWx1, HxWx3 or HxWx4, got shape {np.shape(array)}")
    alpha = None
    if a.ndim == 3 and a.shape[2] == 4:
        alpha, a = a[..., 3].copy(), a[..., :3]
    gray = a.ndim == 2
    if a.dtype in _SCALE:
        x = torch.from_numpy(a.astype(np.float32) / _SCALE[a.dtype])
        unit = True
    elif a.dtype.kind == "f":
        x = torch.from_numpy(a.astype(np.float32))
        unit = bool(np.nanmin(a) >= 0.0 and np.nanmax(a) <= 1.0) if a.size else True
    else:
        raise MaskdnError(f"unsupported pixel type {a.dtype} (use uint8, uint16 or float)")
    x = x[None].expand(3, -1, -1).contiguous() if gray else x.permute(2, 0, 1).contiguous()
    return x, ImageInfo(np.dtype(array.dtype), gray, alpha, unit)


def from_float_rgb(tensor: torch.Tensor, info: ImageInfo) -> np.ndarray:
    """Float ``[3, H, W]`` → the native layout and dtype described by ``info`` (inverse of :func:`to_float_rgb`).

    Gray is the mean of the three channels; integers are clamped to [0, 1], scaled and rounded; floats
    are clamped only if the input lay in [0, 1].
    """
    x = tensor.detach().float().cpu()
    x = x.mean(dim=0) if info.gray else x.permute(1, 2, 0)
    a = x.numpy()
    if info.dtype in _SCALE:
        scale = _SCALE[info.dtype]
        a = np.rint(np.clip(a, 0.0, 1.0) * scale).astype(info.dtype)
    else:
        a = (np.clip(a, 0.0, 1.0) if info.unit_range else a).astype(info.dtype)
    if info.alpha is not None:
        alpha = info.alpha.astype(info.dtype)
        a = np.concatenate([a if a.ndim == 3 else a[..., None].repeat(3, axis=2), alpha[..., None]], axis=2)
    return a
