"""Tests for pipeline.segments: label-map PNG round trips and per-class RLE segments."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from segment_scores import own_scores

import pipeline.segments
from pipeline.segments import (
    UNLABELED_U8,
    UNLABELED_U16,
    decode_label_map_png,
    encode_label_map_png,
    label_map_segments,
    unlabeled_value,
)


def test_uint8_round_trip_with_unlabeled() -> None:
    label_map = np.random.default_rng(0).integers(0, 255, (17, 23)).astype(np.uint8)  # 0..254
    label_map[0, :5] = UNLABELED_U8
    data = encode_label_map_png(label_map, ignore_value=UNLABELED_U8)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L"
    out = decode_label_map_png(data)
    assert out.dtype == np.uint8 and unlabeled_value(out) == 255
    np.testing.assert_array_equal(out, label_map)


def test_int64_argmax_small_vocab_goes_uint8() -> None:
    label_map = np.array([[0, 1, 2], [-1, 2, 1]], dtype=np.int64)
    out = decode_label_map_png(encode_label_map_png(label_map, ignore_value=-1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 2], [255, 2, 1]])


def test_uint16_when_index_above_254() -> None:
    label_map = np.array([[0, 255, 300], [65534, 7, 0]], dtype=np.int32)
    data = encode_label_map_png(label_map)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode.startswith("I")  # 16-bit grayscale PNG
    out = decode_label_map_png(data)
    assert out.dtype == np.uint16 and unlabeled_value(out) == 65535
    np.testing.assert_array_equal(out, label_map)

    with_unlabeled = np.array([[0, 300], [-1, 1]], dtype=np.int64)
    out = decode_label_map_png(encode_label_map_png(with_unlabeled, ignore_value=-1))
    np.testing.assert_array_equal(out, [[0, 300], [UNLABELED_U16, 1]])

    # A uint8 map without an ignore value: 255 is class 255, so it needs 16 bits.
    out = decode_label_map_png(encode_label_map_png(np.array([[255, 0]], dtype=np.uint8)))
    assert out.dtype == np.uint16 and out.tolist() == [[255, 0]]


def test_encode_errors() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode_label_map_png(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="16-bit"):
        encode_label_map_png(np.array([[0, 65535]]))
    with pytest.raises(ValueError, match="integer"):
        encode_label_map_png(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        encode_label_map_png(np.zeros((2, 2, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="cannot decode"):
        decode_label_map_png(b"not a png")
    rgb = io.BytesIO()
    Image.new("RGB", (2, 2)).save(rgb, format="PNG")
    with pytest.raises(ValueError, match="grayscale"):
        decode_label_map_png(rgb.getvalue())


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """A 6x8 label map: class 1 is a 2x3 box at rows 1-2, cols 2-4; class 3 is one pixel; rest class 0."""
    label_map = np.zeros((6, 8), dtype=np.int64)
    label_map[1:3, 2:5] = 1
    label_map[5, 7] = 3
    label_map[0, 0] = -1  # unlabeled
    scores = np.zeros((4, 6, 8), dtype=np.float32)
    scores[0] = 0.5
    scores[1, 1:3, 2:5] = [[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]
    scores[3, 5, 7] = 0.25
    return label_map, scores


def test_segments_bbox_area_score() -> None:
    label_map, scores = hand_made()
    names = ["sky", "cat", "dog", "car"]
    segments = label_map_segments(label_map, own_scores(label_map, scores), names, [1, 2, 3, 4], ignore_value=-1)
    assert [s["category_id"] for s in segments] == [1, 2, 4]  # dog absent, unlabeled ignored
    assert [s["category_name"] for s in segments] == ["sky", "cat", "car"]
    by_name = {s["category_name"]: s for s in segments}
    cat = by_name["cat"]
    assert cat["area"] == 6 and isinstance(cat["area"], int)
    assert cat["bbox"] == [2.0, 1.0, 3.0, 2.0]
    assert cat["score"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]))
    assert isinstance(cat["rle"], str) and isinstance(cat["score"], float)
    car = by_name["car"]
    assert car["area"] == 1 and car["bbox"] == [7.0, 5.0, 1.0, 1.0] and car["score"] == pytest.approx(0.25)
    sky = by_name["sky"]
    assert sky["area"] == 48 - 6 - 1 - 1 and sky["bbox"] == [0.0, 0.0, 8.0, 6.0]
    assert sky["score"] == pytest.approx(0.5)


def test_rle_round_trip_equals_label_map_pixels() -> None:
    rng = np.random.default_rng(3)
    label_map = rng.integers(0, 5, (37, 29))
    label_map[rng.random((37, 29)) < 0.1] = 255
    segments = label_map_segments(label_map, None, list("abcde"), [10, 20, 30, 40, 50], ignore_value=255)
    assert len(segments) == 5
    covered = np.zeros(label_map.shape, dtype=int)
    for segment in segments:
        index = [10, 20, 30, 40, 50].index(segment["category_id"])
        mask = mask_utils.decode({"size": [37, 29], "counts": segment["rle"].encode("ascii")}).astype(bool)
        assert mask.dtype == bool and mask.shape == (37, 29)
        np.testing.assert_array_equal(mask, label_map == index)
        assert segment["area"] == int(mask.sum())
        assert segment["score"] == 1.0
        covered += mask
    np.testing.assert_array_equal(covered, label_map != 255)


@pytest.mark.parametrize("band_pixels", [1 << 22, 64, 1], ids=["one-band", "bands", "column-bands"])
def test_rle_of_one_pass_equals_pycocotools_per_class_mask(band_pixels: int, monkeypatch) -> None:
    """The segments' RLE strings, areas and boxes are exactly what ``pycocotools.mask.encode`` gives for each
    class's binary mask, also where runs cross the bands of columns the map is read in."""
    monkeypatch.setattr(pipeline.segments, "UNIQUE_BAND_PIXELS", band_pixels)
    rng = np.random.default_rng(4)
    maps = [
        rng.integers(0, 6, (37, 29)).astype(np.uint8),
        (np.add.outer(np.arange(40) // 7, np.arange(33) // 5) % 6).astype(np.uint8),
        np.full((9, 13), 2, np.uint8),
        rng.integers(0, 6, (1, 40)).astype(np.uint16),
        rng.integers(0, 6, (40, 1)).astype(np.uint8),
    ]
    maps[1][:, 3:9] = 255
    maps[2][4:, :] = 255
    for label_map in maps:
        segments = label_map_segments(label_map, None, list("abcdef"), [1, 2, 3, 4, 5, 6], ignore_value=255)
        assert [(s["category_id"], s["rle"], s["area"], s["bbox"]) for s in segments] == per_class_masks(label_map, 255)


def per_class_masks(label_map: np.ndarray, ignore_value: int) -> list[tuple[int, str, int, list[float]]]:
    """Each class's (category id, RLE string, area, box) from ``pycocotools.mask.encode`` of its binary mask."""
    expected = []
    for index in sorted(set(np.unique(label_map).tolist()) - {ignore_value}):
        rle = mask_utils.encode(np.asfortranarray((label_map == index).astype(np.uint8)))
        counts, area = rle["counts"].decode("ascii"), int(mask_utils.area(rle))
        expected.append((index + 1, counts, area, list(mask_utils.toBbox(rle))))
    return expected


def test_segments_of_more_than_255_classes_in_one_map() -> None:
    """All classes' RLEs are encoded in one pycocotools call, whose ``area`` of a list fails past 255 masks."""
    label_map = np.random.default_rng(5).integers(0, 300, (40, 50)).astype(np.uint16)
    label_map[::7] = 65535
    names = [f"class {i}" for i in range(300)]
    segments = label_map_segments(label_map, None, names, list(range(1, 301)), ignore_value=65535)
    assert len(segments) > 255
    assert [(s["category_id"], s["rle"], s["area"], s["bbox"]) for s in segments] == per_class_masks(label_map, 65535)


def test_segments_errors() -> None:
    label_map, scores = hand_made()
    with pytest.raises(ValueError, match="outside 0..3"):
        label_map_segments(label_map, None, ["a", "b", "c", "d"], [1, 2, 3, 4])  # -1 not ignored
    with pytest.raises(ValueError, match="pixel_scores"):
        label_map_segments(
            label_map, own_scores(label_map, scores)[:3], ["a", "b", "c", "d"], [1, 2, 3, 4], ignore_value=-1
        )
    with pytest.raises(ValueError, match="category ids"):
        label_map_segments(label_map, own_scores(label_map, scores), ["a", "b", "c", "d"], [1, 2, 3], ignore_value=-1)
    with pytest.raises(ValueError, match="outside 0..2"):
        label_map_segments(label_map, None, ["a", "b", "c"], [1, 2, 3], ignore_value=-1)
