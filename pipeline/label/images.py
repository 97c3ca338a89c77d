"""Decode untrusted image bytes into RGB uint8 ``[H, W, 3]`` arrays, with one error type and a short reason.

EXIF orientation applied, first frame of multi-frame files, any colour mode to RGB, transparency onto
white, 16-bit scaled to 8, and size limits (``max_pixels``, :data:`MIN_SIDE`). The conversion rules and
their reasons: ``docs/labeling.md``.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "ImageDecodeError",
    "decode_image",
    "decode_with",
    "image_suffix",
    "read_image_file",
]

#: PIL's own hard limit (``2 * Image.MAX_IMAGE_PIXELS``); above it ``Image.open`` refuses the file anyway.
DEFAULT_MAX_PIXELS = 178_956_970
#: Minimum width and height in pixels.
MIN_SIDE = 2

_WHITE = (255, 255, 255, 255)
# The file extension of a format whose first registered one is not its usual one (PIL lists .jfif first;
# MPO, a camera's multi-picture JPEG, opens as JPEG wherever .jpg does).
_USUAL_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg"}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
T = TypeVar("T")


class ImageDecodeError(ValueError):
    """An input could not be turned into an RGB image.

    Attributes:
        reason: short human-readable reason, e.g. ``"truncated image"`` (what errors files record).
        path: the file path when known, else ``None``.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


def _to_rgb(img: Image.Image) -> Image.Image:
    """A loaded PIL image of any mode as an RGB PIL image (``img`` itself when it is RGB already)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit scaling is hand-written: PIL's convert("L") clips values above 255 instead of scaling.
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        gray = (values >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        # Float scaling is hand-written: PIL's convert("L") assumes a 0..255 range for floats.
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        gray = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (any format PIL reads) into an RGB array.

    Args:
        data: the encoded file content (``bytes``, ``bytearray`` or ``memoryview``).
        max_pixels: largest accepted ``width * height``. Values above :data:`DEFAULT_MAX_PIXELS` are
            still capped by PIL's decompression-bomb limit unless the process raises
            ``PIL.Image.MAX_IMAGE_PIXELS``.

    Returns:
        ``np.ndarray`` of shape ``[H, W, 3]``, dtype uint8, RGB, writable, with EXIF orientation applied
        (conversion rules: ``docs/labeling.md``).

    Raises:
        ImageDecodeError: for every failure, with ``reason`` one of ``"empty file"``,
            ``"not an image (cannot identify image file)"``, ``"image too large: W x H pixels > max"``,
            ``"image too small: WxH (minimum 2x2)"``, ``"truncated image"``, ``"corrupt image: ..."``,
            ``"unsupported image mode: ..."``. PIL's own exceptions never escape.
    """
    return decode_with(data, lambda image: np.array(image, dtype=np.uint8), max_pixels)


def decode_with(data: bytes, use: Callable[[Image.Image], T], max_pixels: int = DEFAULT_MAX_PIXELS) -> T:
    """``use`` (called once) of the RGB PIL image that ``data`` decodes to, as :func:`decode_image` decodes it
    (``np.array`` of that image is :func:`decode_image`'s array): for a caller that goes on in PIL (a resize)
    without the array's two copies. The image is open only during the call; ``use``'s own exceptions pass
    unchanged, and every decoding failure is an :class:`ImageDecodeError` as in :func:`decode_image`."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty file")
    with warnings.catch_warnings():
        # Our max_pixels check replaces PIL's decompression-bomb warning (its hard error is mapped below),
        # and PIL's UserWarnings about damaged files are redundant with the error we raise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _decode(data, max_pixels, use)


def _failure(exc: Exception) -> ImageDecodeError:
    """Map an exception raised inside PIL to an :class:`ImageDecodeError` with a short reason."""
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return ImageDecodeError("truncated image")
    return ImageDecodeError(f"corrupt image: {type(exc).__name__}: {exc}")


def _decode(data: bytes, max_pixels: int, use: Callable[[Image.Image], T]) -> T:
    """Body of :func:`decode_with`, run with PIL's warnings silenced."""
    # PIL raises many exception types on hostile input (OSError, SyntaxError, ValueError, struct.error,
    # zlib.error, EOFError, ...), so each PIL step below catches Exception and maps it to a reason.
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large (PIL decompression-bomb limit): {exc}") from None
    except Exception as exc:
        raise _failure(exc) from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(f"image too large: {width} x {height} pixels > {max_pixels}")
        if width < MIN_SIDE or height < MIN_SIDE:
            raise ImageDecodeError(f"image too small: {width}x{height} (minimum {MIN_SIDE}x{MIN_SIDE})")
        try:
            img.load()  # full decode now, so truncated data fails here (LOAD_TRUNCATED_IMAGES stays off)
        except Exception as exc:
            raise _failure(exc) from None
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:
            oriented = img  # malformed EXIF: keep the decoded pixels, ignore the orientation tag
        try:
            rgb = _to_rgb(oriented)
        except ValueError as exc:
            raise ImageDecodeError(f"unsupported image mode: {oriented.mode} ({exc})") from None
        except Exception as exc:
            raise _failure(exc) from None
        return use(rgb)


def image_suffix(data: bytes, name: str = "") -> str:
    """The file extension for encoded image ``data``: ``name``'s own when it is one of the decoded format's
    (``.JPEG`` stays), else the format's usual one (``.png``); ``""`` when PIL cannot identify the data.
    Only the header is read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            image_format = img.format or ""
    except Exception:  # any PIL failure on hostile bytes: no known format
        return ""
    Image.init()
    suffixes = [s for s, f in Image.registered_extensions().items() if f == image_format]
    own = os.path.splitext(name)[1]
    if own.lower() in suffixes:
        return own
    return _USUAL_SUFFIX.get(image_format, suffixes[0] if suffixes else "")


def read_image_file(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a local image file and :func:`decode_image` it.

    Returns:
        ``[H, W, 3]`` uint8 RGB array.

    Raises:
        ImageDecodeError: with ``path`` set and a reason such as ``"file not found"``, ``"is a directory"``,
            ``"permission denied"``, ``"cannot read file: ..."``, or any :func:`decode_image` reason.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageDecodeError("file not found", source) from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory", source) from None
    except PermissionError:
        raise ImageDecodeError("permission denied", source) from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}", source) from None
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.reason, source) from None
