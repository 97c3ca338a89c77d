"""Build a labeling run's output folder without Ray or a model: real image files, random label maps and
pixel scores written through ``RunOutput.write_shard`` + ``finalize``, and optionally a PNG ground-truth
folder with a class-names file (:func:`build_run`), or a run of images embedded in Parquet and WebDataset
inputs, listed by the labeling job's own code (:func:`build_embedded_run`). Shared by the review and export
tests, with :func:`isolate_fiftyone`."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.label.containers import expand_container
from pipeline.label.images import decode_image
from pipeline.label.inputs import image_id, resolve_inputs
from pipeline.outputs import RunOutput
from pipeline.segments import encode_label_map_png, label_map_segments, unlabeled_value
from pipeline.vocabulary import Vocabulary


def isolate_fiftyone() -> str:
    """Point FiftyOne at a private database before it is imported; returns the database folder.

    Sets ``FIFTYONE_DATABASE_DIR`` (a new temporary folder) and a unique ``FIFTYONE_DATABASE_NAME``: FiftyOne
    attaches to any running FiftyOne ``mongod`` of the same user whatever its folder, so the name keeps the
    tests' datasets apart even then. At exit (after FiftyOne's own exit handlers, which were registered
    later) the database service this process started is stopped and the folder (300 MB of preallocated
    journal) removed. Subprocesses inherit the variables (and FiftyOne's private port), so they use the
    same database. Idempotent within a process.
    """
    folder = os.environ.get("SAN_TESTS_FIFTYONE_DB")
    if folder:
        return folder
    if "fiftyone" in sys.modules:
        raise RuntimeError("fiftyone was imported before isolate_fiftyone(); the tests would use the real database")
    folder = tempfile.mkdtemp(prefix="san-tests-fiftyone-")
    os.environ.update(
        {
            "SAN_TESTS_FIFTYONE_DB": folder,
            "FIFTYONE_DATABASE_DIR": folder,
            "FIFTYONE_DATABASE_NAME": f"san-tests-{uuid.uuid4().hex[:12]}",
            "FIFTYONE_DATABASE_VALIDATION": "false",  # silences "oldest supported MongoDB" of the bundled 6.0
            "FIFTYONE_DO_NOT_TRACK": "true",
        }
    )
    atexit.register(_stop_database, folder)
    return folder


def _stop_database(folder: str) -> None:
    database = sys.modules.get("fiftyone.core.odm.database")
    service = getattr(database, "_db_service", None)  # private: the DatabaseService this process started
    child = getattr(service, "child", None)
    if child is not None and not getattr(service, "attached", False):
        service.stop()  # closes the service's stdin: it stops mongod once no other client is registered
        try:
            child.wait(timeout=30)
        except Exception:  # psutil.TimeoutExpired: leave the folder rather than delete it under mongod
            return
    shutil.rmtree(folder, ignore_errors=True)


def name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


@dataclass
class BuiltRun:
    out: Path
    vocabulary: Vocabulary
    #: image_path -> label map as the run stores it (uint8/uint16, unlabeled = dtype max)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    #: image_path -> raw ground-truth PNG values (only images that have ground truth)
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
    gt_dir: Path | None = None
    gt_classes: Path | None = None
    #: raw GT value -> class name; values absent here (gaps, 255) are ignored
    gt_value_names: dict[int, str] = field(default_factory=dict)


def _blocks(rng: np.random.Generator, h: int, w: int, values: list[int], block: int = 6) -> np.ndarray:
    """A map of rectangular blocks of random ``values`` (looks like regions, not pixel noise)."""
    grid = rng.choice(values, size=(h // block + 1, w // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:h, :w]


def build_run(
    root: Path,
    vocabulary: Vocabulary,
    n_images: int = 6,
    seed: int = 0,
    gt_classes_text: str | None = None,
    images_without_gt: int = 1,
    names: list[str] | None = None,
) -> BuiltRun:
    """Write ``root/images`` (the run's input; image i is ``names[i]``, default ``img_<i>.png``, odd ones in
    ``sub/``), ``root/out`` (two prediction shards, one error row) and, when ``gt_classes_text`` is given
    (line v names GT value v; ``#`` lines are gaps), ``root/gt`` PNGs for all but the last
    ``images_without_gt`` images and ``root/gt_classes.txt``.

    Predictions follow the ground truth where a GT class is in the vocabulary, with 30% of pixels replaced
    by random classes and 5% unlabeled, so IoUs are neither 0 nor 1.
    """
    rng = np.random.default_rng(seed)
    n = len(vocabulary)
    run = BuiltRun(out=root / "out", vocabulary=vocabulary)
    by_name = {name_key(v): i for i, v in enumerate(vocabulary.names)}
    gt_values: list[int] = []
    if gt_classes_text is not None:
        for value, line in enumerate(gt_classes_text.split("\n")):
            name = " ".join(line.split())
            if name and not name.startswith("#"):
                run.gt_value_names[value] = name
        gt_values = sorted(run.gt_value_names)
        run.gt_dir = root / "gt"
        run.gt_classes = root / "gt_classes.txt"
        run.gt_classes.write_text(gt_classes_text, encoding="utf-8")
    ignore_values = [v for v in range(max(gt_values, default=0) + 1) if v not in run.gt_value_names] + [255]

    rows = []
    for i in range(n_images):
        h, w = int(rng.integers(18, 50)), int(rng.integers(18, 50))
        image = root / "images" / ("sub" if i % 2 else "") / (names[i] if names else f"img_{i}.png")
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(image)
        path = str(image)
        dtype = np.uint8 if n <= 255 else np.uint16
        has_gt = gt_values and i < n_images - images_without_gt
        if has_gt:
            gt = _blocks(rng, h, w, gt_values).astype(np.uint8)
            holes = rng.random((h, w)) < 0.06
            gt[holes] = rng.choice(ignore_values, size=int(holes.sum()))
            lookup = np.array([by_name.get(name_key(run.gt_value_names.get(v, "")), -1) for v in range(256)])
            pred = lookup[gt]
            missing = pred < 0
            pred[missing] = rng.integers(0, n, size=int(missing.sum()))
            run.ground_truth[path] = gt
            target = run.gt_dir / ("nested" if i % 2 else "") / f"img_{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gt).save(target)
        else:
            pred = _blocks(rng, h, w, list(range(n)), block=5).astype(np.int64)
        noise = rng.random((h, w)) < 0.3
        pred[noise] = rng.integers(0, n, size=int(noise.sum()))
        run.predictions[path] = _label_map(rng, pred, dtype)
        rows.append(_prediction_row(rng, path, run.predictions[path], vocabulary))
    _finish(run.out, vocabulary, rows, str(root / "images"))
    return run


def _label_map(rng: np.random.Generator, classes: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``classes`` as the run stores a label map, with 5% of the pixels unlabeled (the dtype's maximum)."""
    label_map = classes.astype(dtype)
    label_map[rng.random(classes.shape) < 0.05] = np.iinfo(dtype).max
    return label_map


def _prediction_row(rng: np.random.Generator, path: str, label_map: np.ndarray, vocabulary: Vocabulary) -> dict:
    """A predictions row of ``label_map`` with random pixel scores, as the labeling job writes it."""
    h, w = label_map.shape
    scores = rng.uniform(0.2, 1.0, size=(h, w))
    unlabeled = unlabeled_value(label_map)
    return {
        "image_path": path,
        "image_id": image_id(path),
        "width": w,
        "height": h,
        "label_map_png": encode_label_map_png(label_map, ignore_value=unlabeled),
        "segments": label_map_segments(
            label_map, scores, vocabulary.names, vocabulary.category_ids, ignore_value=unlabeled
        ),
    }


def _finish(out: Path, vocabulary: Vocabulary, rows: list[dict], input_spec: str) -> None:
    """Write ``rows`` as two prediction shards (one error row) and the manifest, naming ``input_spec`` as
    the labeling job does."""
    output = RunOutput(out)
    half = len(rows) // 2
    output.write_shard(rows[:half], [])
    output.write_shard(
        rows[half:], [{"image_path": str(out.parent / "images" / "broken.jpg"), "error": "cannot decode"}]
    )
    manifest = {"vocabulary": vocabulary.to_json(), "input": input_spec, "options": {"input": input_spec}}
    output.finalize(vocabulary, manifest)


def encoded_image(seed: int, image_format: str = "PNG") -> bytes:
    """A random 20x28 RGB image encoded in ``image_format``."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@dataclass
class EmbeddedRun:
    out: Path
    vocabulary: Vocabulary
    #: image_path, as the labeling job lists it -> the image's bytes in the input
    images: dict[str, bytes]
    #: real files that an embedded image's path names (or normalises to), which must never be read
    decoys: list[Path]
    #: image_path -> label map as the run stores it
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


def build_embedded_run(root: Path, vocabulary: Vocabulary, seed: int = 0) -> EmbeddedRun:
    """A run whose input (``root/inputs/data.*``) embeds every image: ``data.parquet`` has an image-bytes
    and a path column naming a real file (``root/decoy.png``), a relative path (``rel/pic.jpg``, a real file
    under the current folder's ``rel/`` is up to the test) and a name without extension; ``data.tar`` has a
    member ``000.png`` and one whose name, normalised, is ``root/decoy.png``. The images are listed with
    the labeling job's own code and labeled with random maps."""
    rng = np.random.default_rng(seed)
    decoy = root / "decoy.png"
    decoy.parent.mkdir(parents=True, exist_ok=True)
    decoy.write_bytes(encoded_image(seed + 100))
    inputs = root / "inputs"
    inputs.mkdir()
    paths = [str(decoy), "rel/pic.jpg", "no_extension"]
    blobs = [encoded_image(seed + 1), encoded_image(seed + 2, "JPEG"), encoded_image(seed + 3)]
    pq.write_table(pa.table({"path": paths, "image_bytes": blobs}), inputs / "data.parquet")
    with tarfile.open(inputs / "data.tar", "w") as tar:
        for name, data in (("000.png", encoded_image(seed + 4)), ("../../decoy.png", encoded_image(seed + 5))):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    spec = str(inputs / "data.*")
    resolved = resolve_inputs(spec)
    items = [item for container in resolved.containers for item in expand_container(container)]
    run = EmbeddedRun(root / "out", vocabulary, {item.image_path: item.data for item in items}, [decoy])
    rows = []
    for path, data in run.images.items():
        h, w = decode_image(data).shape[:2]
        run.predictions[path] = _label_map(rng, rng.integers(0, len(vocabulary), size=(h, w)), np.uint8)
        rows.append(_prediction_row(rng, path, run.predictions[path], vocabulary))
    _finish(run.out, vocabulary, rows, spec)
    return run
