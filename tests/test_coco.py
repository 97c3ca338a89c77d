"""Tests for pipeline.exports.coco and san.atomic.write_json_atomic: COCO JSON that pycocotools loads, and atomic
JSON writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from segment_scores import own_scores

from pipeline.exports.coco import build_coco
from pipeline.segments import label_map_segments
from san.atomic import write_json_atomic

NAMES = ["sky", "cat", "dog"]
IDS = [1, 2, 3]


def labeled_images() -> tuple[list[dict], dict[int, np.ndarray]]:
    rng = np.random.default_rng(7)
    maps = {
        11: rng.integers(0, 3, (20, 30)),
        42: np.full((16, 12), 2),
        7: np.full((5, 6), -1),  # fully unlabeled: no annotations
    }
    maps[42][:4, :4] = -1
    records = []
    for image_id, label_map in maps.items():
        scores = rng.random((3, *label_map.shape)).astype(np.float32)
        height, width = label_map.shape
        records.append(
            {
                "image_id": image_id,
                "image_path": f"/data/img_{image_id}.jpg",
                "width": width,
                "height": height,
                "segments": label_map_segments(label_map, own_scores(label_map, scores), NAMES, IDS, ignore_value=-1),
            }
        )
    return records, maps


def test_build_coco_structure() -> None:
    records, _ = labeled_images()
    coco = build_coco(records, NAMES, IDS)
    assert coco["categories"] == [{"id": i, "name": n} for i, n in zip(IDS, NAMES, strict=True)]
    assert [im["id"] for im in coco["images"]] == [11, 42, 7]
    assert coco["images"][1] == {"id": 42, "file_name": "/data/img_42.jpg", "width": 12, "height": 16}
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    assert len(ann_ids) == 3 + 1
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        assert isinstance(ann["score"], float) and 0.0 <= ann["score"] <= 1.0
        assert len(ann["bbox"]) == 4
    json.dumps(coco, allow_nan=False)  # plain Python types only


def test_pycocotools_loads_and_masks_match(tmp_path: Path) -> None:
    records, maps = labeled_images()
    path = tmp_path / "out" / "coco.json"
    path.parent.mkdir()
    write_json_atomic(build_coco(records, NAMES, IDS), path)
    assert [p.name for p in path.parent.iterdir()] == ["coco.json"]  # no temp file left behind

    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [7, 11, 42]
    assert coco.getAnnIds(imgIds=[7]) == []
    for image_id, label_map in maps.items():
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            class_index = IDS.index(ann["category_id"])
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), label_map == class_index)
            assert ann["area"] == int((label_map == class_index).sum())


def test_segments_from_parquet_like_values() -> None:
    """Values read back from Parquet arrive as numpy scalars/arrays and bytes; they are converted."""
    segment = {
        "category_id": np.int64(2),
        "category_name": "cat",
        "rle": b"03",  # a 3x1 all-ones mask
        "area": np.int64(3),
        "bbox": np.array([0.0, 0.0, 1.0, 3.0]),
        "score": np.float32(0.5),
    }
    record = {
        "image_id": np.int64(5),
        "image_path": "a.png",
        "width": np.int32(1),
        "height": 3,
        "segments": np.array([segment], dtype=object),
    }
    coco = build_coco([record], NAMES, IDS)
    ann = coco["annotations"][0]
    assert ann["segmentation"] == {"size": [3, 1], "counts": "03"}
    assert type(ann["category_id"]) is int and type(ann["area"]) is int and type(ann["score"]) is float
    assert ann["bbox"] == [0.0, 0.0, 1.0, 3.0] and all(type(v) is float for v in ann["bbox"])
    assert type(coco["images"][0]["id"]) is int
    json.dumps(coco)


def test_build_coco_errors() -> None:
    records, _ = labeled_images()
    with pytest.raises(ValueError, match="duplicate image_id 11"):
        build_coco([records[0], records[0]], NAMES, IDS)
    with pytest.raises(ValueError, match="unknown category_id 2"):
        build_coco(records, ["sky", "dog"], [1, 3])
    with pytest.raises(ValueError, match="category ids"):
        build_coco(records, NAMES, [1, 2])
    with pytest.raises(ValueError, match="not unique"):
        build_coco(records, NAMES, [1, 1, 2])
    with pytest.raises(ValueError, match="positive"):
        build_coco([{**records[0], "width": 0}], NAMES, IDS)


def test_write_json_atomic_replaces_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json_atomic({"a": 1}, path)
    write_json_atomic({"a": 2, "name": "caf\u00e9"}, path, indent=2)
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 2, "name": "caf\u00e9"}
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    with pytest.raises(ValueError):
        write_json_atomic({"bad": float("nan")}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)
    assert json.loads(path.read_text(encoding="utf-8"))["a"] == 2  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    with pytest.raises(IsADirectoryError, match=r"is a folder; give the path of a \.json file: '.*tmp"):
        write_json_atomic({"a": 3}, tmp_path)  # names the folder, not a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
