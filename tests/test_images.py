"""Tests for pipeline.label.images: mode conversions, EXIF orientation and every failure reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline.label.images import MIN_SIDE, ImageDecodeError, decode_image, read_image_file


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert isinstance(array, np.ndarray)
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous and array.flags.writeable


def test_rgb_png_exact() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgb), "PNG"))
    check_rgb(out, 7, 9)
    np.testing.assert_array_equal(out, rgb)


def test_real_photo_jpeg() -> None:
    photo = skimage.data.astronaut()
    out = decode_image(encode(Image.fromarray(photo), "JPEG", quality=95))
    check_rgb(out, 512, 512)
    assert np.abs(out.astype(int) - photo.astype(int)).mean() < 3


def test_grayscale_l_and_bilevel() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = decode_image(encode(Image.fromarray(gray), "PNG"))
    check_rgb(out, 3, 4)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))

    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    bilevel = Image.fromarray(bits).convert("1")
    assert bilevel.mode == "1"
    out = decode_image(encode(bilevel, "PNG"))
    check_rgb(out, 2, 3)
    np.testing.assert_array_equal(out[:, :, 0], bits.astype(np.uint8) * 255)


def test_16bit_grayscale_scaled_by_shift() -> None:
    values = np.array([[0, 255, 256, 1000], [32768, 65535, 257 * 7, 513]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(encode(img, "PNG"))
    check_rgb(out, 2, 4)
    np.testing.assert_array_equal(out[:, :, 1], (values >> 8).astype(np.uint8))
    assert out[1, 2, 0] == 7  # 8-bit data stored as x * 257 comes back exactly


def test_32bit_int_and_float_modes() -> None:
    ints = np.array([[-5, 0, 65535], [70000, 256, 512]], dtype=np.int32)
    out = decode_image(encode(Image.fromarray(ints), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 255], [255, 1, 2]])

    floats = np.array([[0.0, 0.5, 1.0], [2.0, -1.0, np.nan]], dtype=np.float32)
    img = Image.fromarray(floats)
    assert img.mode == "F"
    out = decode_image(encode(img, "TIFF"))
    np.testing.assert_array_equal(out[:, :, 2], [[0, 128, 255], [255, 0, 0]])


def test_rgba_and_la_composite_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 1] = (0, 0, 0, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black: mid gray
    rgba[1, 1] = (200, 0, 0, 255)
    out = decode_image(encode(Image.fromarray(rgba), "PNG"))
    check_rgb(out, 2, 2)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])
    assert tuple(out[1, 1]) == (200, 0, 0)

    la = Image.fromarray(np.array([[[50, 255], [0, 0]], [[0, 0], [90, 255]]], dtype=np.uint8), mode="LA")
    out = decode_image(encode(la, "PNG"))
    assert tuple(out[0, 0]) == (50, 50, 50)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (90, 90, 90)


def test_palette_with_transparency() -> None:
    img = Image.new("P", (3, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 0, 1, 2])
    out = decode_image(encode(img, "PNG", transparency=0))
    check_rgb(out, 2, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent index -> white
    assert tuple(out[0, 1]) == (255, 0, 0)
    assert tuple(out[1, 2]) == (0, 0, 255)
    # Without transparency the palette colour is kept.
    assert tuple(decode_image(encode(img, "PNG"))[0, 0]) == (0, 0, 0)
    # GIF stores palettes too.
    assert decode_image(encode(img, "GIF"))[0, 1].tolist() == [255, 0, 0]


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=100))
    check_rgb(out, 6, 8)
    r, g, b = out[3, 4].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_transposes() -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # H=32, W=64: left half red, right half blue
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    out = decode_image(data)
    check_rgb(out, 64, 32)  # transposed
    assert out[8, 16, 0] > 200 and out[8, 16, 2] < 50  # stored left (red) is now on top
    assert out[56, 16, 2] > 200 and out[56, 16, 0] < 50


def test_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(decode_image(data)[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "not an image"),
        (b"hello world, definitely not a JPEG", "not an image (cannot identify image file)"),
    ],
)
def test_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason.startswith(reason)
    assert info.value.path is None


def test_truncated_jpeg_and_png() -> None:
    photo = Image.fromarray(skimage.data.astronaut()[:128, :128])
    for fmt in ("JPEG", "PNG"):
        data = encode(photo, fmt)
        for cut in (len(data) // 2, 200):
            with pytest.raises(ImageDecodeError) as info:
                decode_image(data[:cut])
            assert info.value.reason == "truncated image", (fmt, cut, info.value.reason)


def test_too_small() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert info.value.reason == f"image too small: 1x1 (minimum {MIN_SIDE}x{MIN_SIDE})"
    with pytest.raises(ImageDecodeError, match="too small: 5x1"):
        decode_image(encode(Image.new("L", (5, 1)), "PNG"))
    check_rgb(decode_image(encode(Image.new("RGB", (2, 2)), "PNG")), 2, 2)


def test_too_large_by_max_pixels() -> None:
    data = encode(Image.new("RGB", (20, 10)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=199)
    assert info.value.reason == "image too large: 20 x 10 pixels > 199"
    check_rgb(decode_image(data, max_pixels=200), 10, 20)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming the given size whose pixel data stops after a few bytes (a cheap fake "bomb")."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))[:-4]  # start of a pixel stream, cut short
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)


def test_decompression_bomb_never_escapes() -> None:
    with pytest.raises(ImageDecodeError, match="image too large"):
        decode_image(png_header_only(30_000, 30_000))  # above PIL's hard limit
    with pytest.raises(ImageDecodeError, match=r"image too large: 10000 x 10000 pixels > 1000000"):
        decode_image(png_header_only(10_000, 10_000), max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match="truncated image"):
        decode_image(png_header_only(64, 64))  # header fine, pixel data missing


def test_read_image_file(tmp_path: Path) -> None:
    good = tmp_path / "ok.png"
    good.write_bytes(encode(Image.new("RGB", (4, 3), (1, 2, 3)), "PNG"))
    out = read_image_file(good)
    check_rgb(out, 3, 4)
    assert tuple(out[0, 0]) == (1, 2, 3)

    fake = tmp_path / "random.jpg"
    fake.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = {
        fake: "not an image (cannot identify image file)",
        empty: "empty file",
        tmp_path: "is a directory",
        tmp_path / "missing.png": "file not found",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageDecodeError) as info:
            read_image_file(path)
        assert info.value.reason == reason
        assert info.value.path == str(path)
        assert str(path) in str(info.value)
