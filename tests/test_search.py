"""Region search (``jobs/search.py``, :mod:`pipeline.region_search`) over planted regions: an image whose region
is the query's own text embedding ranks first, with that region's box; stale and repeated rows count once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import san
from pipeline.label.inputs import image_id
from pipeline.output_shards import write_shard_file
from pipeline.region_search import RegionSearchError, run_classifier, search_run
from pipeline.region_shards import REGION_SCHEMA, regions_row
from pipeline.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
QUERY = "forklift"
QUERIES, MASK_H, MASK_W = 10, 4, 5
# Padded input 64 x 80 (16 x the mask), the image 60 x 80 inside it, the original 120 x 160: twice as large.
PADDED, INPUT, ORIGINAL = (64, 80), (60, 80), (120, 160)


def _model(path: Path) -> str:
    """The tiny random model with CLIP's trained logit scale (100): the random text tower gives every prompt
    nearly the same direction (cosine 0.93-0.98), which its initial scale (1 / 0.07) could not tell apart."""
    torch.manual_seed(0)
    model = san.build_san("san_tiny")
    with torch.no_grad():
        model.text_classifier.logit_scale.fill_(np.log(100.0))
    return str(san.save_checkpoint(model, path))


def _write_run(root: Path, images: int = 30) -> tuple[Path, str]:
    """A run of :func:`_model` with vocabulary cat, grass, sky and regions of those classes in two files; image 7's
    region 3 is the query's text direction, with a mask of cells rows 1-2, columns 2-3; returns the run and
    image 7's path. Image 7 is also in the second file (an interrupted write), and image 5 has an older row
    whose region 0 is also the query (superseded by its newer, random row)."""
    vocabulary = Vocabulary(("cat", "grass", "sky"), ((), (), ()))
    manifest = {
        "identity": {"model": _model(root.parent / "model.safetensors"), "config": None, "templates": None},
        "vocabulary": vocabulary.to_json(),
        "other_names": [],
    }
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    classifier, index = run_classifier(root, QUERY)
    directions = (classifier / classifier.norm(dim=1, keepdim=True)).numpy()
    direction, known = directions[index], np.delete(directions, index, axis=0)
    rng = np.random.default_rng(0)

    def row(i: int, generation: int = 1, planted: int | None = None) -> dict:
        # Regions of the run's classes (or of no class), slightly off their text's direction.
        embs = known[rng.integers(0, len(known), QUERIES)] + rng.normal(0.0, 0.01, size=(QUERIES, direction.size))
        embs /= np.linalg.norm(embs, axis=1, keepdims=True)
        masks = rng.normal(0.0, 3.0, size=(QUERIES, MASK_H, MASK_W))
        if planted is not None:
            embs[planted] = direction
            masks[planted] = -5.0
            masks[planted, 1:3, 2:4] = 5.0
        path = f"/data/img_{i:02d}.jpg"
        return regions_row(path, image_id(path), generation, "fp32", masks, embs, PADDED, INPUT, ORIGINAL)

    first = [row(i, planted=3 if i == 7 else None) for i in range(images // 2)] + [row(5, 0, planted=0)]
    second = [row(i) for i in range(images // 2, images)] + [first[7]]
    for rows in (first, second):
        write_shard_file(pa.Table.from_pylist(rows, schema=REGION_SCHEMA), root / "regions")
    return root, "/data/img_07.jpg"


def test_the_image_whose_region_is_the_query_ranks_first_once_with_its_box(tmp_path):
    run, planted = _write_run(tmp_path / "run")
    seen: list[int] = []
    hits = search_run(run, QUERY, top=5, progress=seen.append)
    assert hits[0].image_path == planted and hits[0].region == 3
    assert hits[0].score > 0.5 > 0.2 > hits[1].score
    # Cells rows 1-2, columns 2-3 of a 16-pixel grid on the 60 x 80 input, doubled at the original size.
    assert hits[0].box == (2 * 16 * 2, 1 * 16 * 2, 2 * 16 * 2, 2 * 16 * 2)
    # Bilinear upsampling rounds the square's corners off.
    assert hits[0].mask.shape == ORIGINAL and 0.85 * 64 * 64 < hits[0].mask.sum() < 64 * 64
    paths = [hit.image_path for hit in hits]
    assert len(set(paths)) == len(paths) == 5, "an image written twice is found once"
    assert "/data/img_05.jpg" not in paths[:1], "the superseded row of image 5 is not searched"
    assert sum(seen) == 31  # both files' rows of their image's newest job, image 7 twice
    again = search_run(run, QUERY, top=5)
    assert [(h.image_path, h.score) for h in again] == [(h.image_path, h.score) for h in hits]


def test_a_run_without_regions_is_refused_naming_the_option(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(RegionSearchError, match="keep_regions"):
        search_run(tmp_path / "run", QUERY)


@pytest.mark.slow
def test_search_job_prints_the_hits_and_saves_them_for_the_app(tmp_path):
    from run_builder import isolate_fiftyone

    isolate_fiftyone()
    run, planted = _write_run(tmp_path / "run")
    command = [sys.executable, str(ROOT / "jobs" / "search.py"), str(run), QUERY, "--top", "3", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed = subprocess.run([*command, "--dataset", "hits"], capture_output=True, text=True, env=env, check=True)
    table = printed.stdout.splitlines()
    assert table[0].split()[:2] == ["rank", "score"] and len(table) == 4
    assert table[1].split()[0] == "1" and table[1].endswith(planted) and "64, 32, 64, 64" in table[1]
    assert "fiftyone app launch hits" in printed.stderr
    again = subprocess.run([*command, "--dataset", "hits"], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr

    import fiftyone as fo

    dataset = fo.load_dataset("hits")
    first = dataset.match({"search_rank": 1}).first()
    assert first.image_path == planted and first.region.detections[0].label == QUERY
    assert first.region.detections[0].bounding_box == pytest.approx([64 / 160, 32 / 120, 64 / 160, 64 / 120])
    assert first.region.detections[0].mask.shape == (64, 64)
