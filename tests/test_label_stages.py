"""The labeling job's stages called directly, without Ray: model batches of one padded size, each file read
once, the arrays the model stage hands on, the encoding into typed rows, and the writer's files."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from local_ray import local_ray  # noqa: F401
from PIL import Image

import pipeline.label.batching
from pipeline.label.batching import BATCH_ROW_SCHEMA, PAD_MULTIPLE, GroupStage, model_batch_blocks, probe_size
from pipeline.label.decode import DecodeStage
from pipeline.label.encode import EncodeStage
from pipeline.label.images import decode_image
from pipeline.label.job import TALLY_INTERVAL, _consume
from pipeline.label.model_stage import NullPredictor
from pipeline.label.write import WriteStage
from pipeline.outputs import RunOutput
from pipeline.segments import label_map_segments
from pipeline.vocabulary import parse_vocabulary
from san.transforms import ResizeShortestEdge

RESIZE = ResizeShortestEdge(64, 256)
SIZES = [(48, 64), (64, 48), (36, 64), (48, 48)]  # (height, width): 4:3, 3:4, 16:9, 1:1
VOCABULARY = parse_vocabulary("cat\ndog\nsky\n")


def jpeg(height: int, width: int, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.full((height, width, 3), 128, np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def padded(height: int, width: int) -> tuple[int, int]:
    h, w = RESIZE.output_size(height, width)
    return -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE


def test_batches_of_mixed_aspect_ratios_are_full_and_of_one_padded_size() -> None:
    rng = np.random.default_rng(0)
    sizes = [SIZES[i] for i in rng.integers(0, len(SIZES), 203)]
    datas = [jpeg(*size) for size in sizes]
    paths = [f"{i}.jpg" for i in range(len(sizes))]
    rows = {"image_path": paths, "data": datas, "error": [""] * len(paths), "fingerprint": [""] * len(paths)}
    table = GroupStage(RESIZE, batch_size=16)(rows)
    batches = table.column("image_path").to_pylist()
    assert sorted(p for batch in batches for p in batch) == sorted(paths), "every input in exactly one batch"
    for batch in batches:
        assert len({padded(*sizes[int(p.split(".")[0])]) for p in batch}) == 1, batch
    distinct = len({padded(*size) for size in sizes})
    assert sum(len(b) < 16 for b in batches) <= distinct, "at most one batch per padded size is not full"
    assert batches[-1][-1] == paths[-1], "the last input goes last"


def test_failed_and_unreadable_inputs_are_batched_apart() -> None:
    paths, datas = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], [jpeg(48, 64), b"not an image", jpeg(48, 64), jpeg(48, 64)]
    rows = {"image_path": paths, "data": datas, "error": ["", "", "missing", ""], "fingerprint": list("abcd")}
    table = GroupStage(RESIZE, batch_size=4)(rows)
    assert sorted(table.column("image_path").to_pylist()) == [["a.jpg", "d.jpg"], ["b.jpg"], ["c.jpg"]]
    assert sorted(table.column("fingerprint").to_pylist()) == [["a", "d"], ["b"], ["c"]], "each input's own"


def test_each_file_is_read_once_and_the_decode_stage_uses_the_bytes_the_grouping_read(tmp_path, monkeypatch) -> None:
    files = [tmp_path / f"{i}.jpg" for i in range(5)]
    for i, file in enumerate(files):
        file.write_bytes(jpeg(*SIZES[i % 2]))
    paths = [str(file) for file in files]
    rows = {"image_path": paths, "data": [b""] * 5, "error": [""] * 5, "fingerprint": [""] * 5}
    # A window's budget of two files: the other three carry no bytes, and the decode stage reads them.
    budget = sum(len(file.read_bytes()) for file in files[:2])
    monkeypatch.setattr(pipeline.label.batching, "WINDOW_KEPT_BYTES", budget)
    table = GroupStage(RESIZE, batch_size=8)(rows).to_pydict()
    kept = dict(zip(flat(table["image_path"]), flat(table["data"]), strict=True))
    assert kept == {str(file): file.read_bytes() if i < 2 else b"" for i, file in enumerate(files)}
    for file in files[:2]:
        file.unlink()  # read by the grouping stage: the decode stage must not open them again
    decoded = DecodeStage(RESIZE, max_pixels=10**6)(table)
    assert flat(decoded["error"]) == [""] * 5
    sizes = zip(flat(decoded["height"]), flat(decoded["width"]), strict=True)
    assert dict(zip(flat(decoded["image_path"]), sizes, strict=True)) == {p: SIZES[i % 2] for i, p in enumerate(paths)}


def flat(column: list) -> list:
    """A column of per-batch lists, as one list."""
    return [value for batch in column for value in batch]


@pytest.mark.parametrize(("orientation", "expected"), [(None, (48, 64)), (1, (48, 64)), (6, (64, 48)), (8, (64, 48))])
def test_the_probed_size_is_the_displayed_size(orientation: int | None, expected: tuple[int, int]) -> None:
    assert probe_size("x.jpg", jpeg(48, 64, orientation)) == expected


def test_encoded_rows_are_typed_and_match_the_segments_of_the_label_map(tmp_path) -> None:
    [prediction] = NullPredictor(len(VOCABULARY.names)).predict([np.zeros((1, 1, 3), np.uint8)], [(130, 200)])
    batch = {
        "image_path": np.asarray(["a.jpg", "bad.jpg"], dtype=object),
        "error": np.asarray(["", "truncated image"], dtype=object),
        "height": np.asarray([130, 0]),
        "width": np.asarray([200, 0]),
        "label_map": [prediction.label_map, np.zeros((1, 1), np.uint8)],
        "class_scores": np.stack([prediction.class_scores, np.zeros(3)]),
        "batch_images": np.asarray([1, 0]),
        "fingerprint": np.asarray(["size:1,mtime_ns:2", ""], dtype=object),
    }
    encoded = EncodeStage(VOCABULARY.to_json())(batch)
    assert pa.types.is_struct(encoded.schema.field("segments").type.value_type), "segments are Arrow structs"
    [row, failed] = encoded.to_pylist()
    expected = label_map_segments(prediction.label_map, prediction.scores, VOCABULARY.names, VOCABULARY.category_ids)
    assert row["segments"] == expected
    assert failed["error"] == "truncated image" and failed["segments"] is None

    writer = WriteStage(str(tmp_path), generation=3)
    record = writer(encoded).to_pylist()
    assert record == [{"labeled": 1, "failed": 1, "model_calls": 1.0, "no_space": ""}]
    writer(encoded)  # a retried task: the same rows under the same names
    assert len(list((tmp_path / "predictions").iterdir())) == len(list((tmp_path / "errors").iterdir())) == 1
    written = pq.read_table(tmp_path / "predictions", columns=["image_path", "image_fingerprint", "generation"])
    assert written.to_pylist() == [{"image_path": "a.jpg", "image_fingerprint": "size:1,mtime_ns:2", "generation": 3}]
    assert pq.read_table(tmp_path / "errors").column("generation").to_pylist() == [3]
    assert RunOutput(tmp_path).read_errors().to_pylist() == [{"image_path": "bad.jpg", "error": "truncated image"}]


def test_the_driver_asks_the_tally_for_its_progress_total_at_most_once_a_second(monkeypatch) -> None:
    class Tally:
        asked = 0

        @property
        def counts(self) -> Any:
            Tally.asked += 1
            return SimpleNamespace(remote=lambda: (1000, 0))

    class Records:
        def iter_rows(self) -> Iterator[dict[str, Any]]:
            yield from [{"no_space": "", "labeled": 1, "failed": 0, "model_calls": 0.25}] * 1000

    monkeypatch.setattr(ray, "get", lambda value: value)
    options = SimpleNamespace(progress=True, limit=None, output="out")
    started = time.monotonic()
    counts = _consume(Records(), Tally(), options, "labeling")
    seconds = time.monotonic() - started
    assert counts["labeled"] == 1000 and counts["images_per_model_call"] == 4.0
    assert Tally.asked <= seconds / TALLY_INTERVAL + 2, f"asked {Tally.asked} times for 1000 records in {seconds:.1f} s"


def encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_the_decode_stage_resizes_in_pil_to_the_same_pixels_as_the_array_resize() -> None:
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    rotated = Image.Exif()
    rotated[0x0112] = 6
    palette = rgb.convert("P")
    palette.info["transparency"] = 3
    datas = [
        encoded(rgb, "JPEG"),
        encoded(rgb, "JPEG", exif=rotated.tobytes()),
        encoded(rgb.convert("L"), "PNG"),
        encoded(palette, "PNG", transparency=3),
        encoded(rgb.convert("RGBA"), "PNG"),
        encoded(Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)), "PNG"),
        encoded(Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)), "PNG"),  # already at size
    ]
    paths = [f"{i}.png" for i in range(len(datas))]
    batch = {"image_path": [paths], "data": [datas], "error": [[""] * len(datas)], "fingerprint": [paths]}
    decoded = {key: values[0] for key, values in DecodeStage(RESIZE, max_pixels=10**6)(batch).items()}
    assert decoded["error"] == [""] * len(datas)
    for k, data in enumerate(datas):
        expected = RESIZE(decode_image(data))
        assert (decoded["height"][k], decoded["width"][k]) == decode_image(data).shape[:2]
        np.testing.assert_array_equal(decoded["pixels"][k, : expected.shape[0], : expected.shape[1]], expected)


class _LocalHandle:
    """An actor handle's stand-in for a local object: ``handle.method.remote(...)`` calls it here, and records
    the call."""

    def __init__(self, target: Any, calls: list[str]):
        self.target, self.calls = target, calls

    def __getattr__(self, name: str) -> SimpleNamespace:
        def remote(*args: Any) -> Any:
            self.calls.append(name)
            return getattr(self.target, name)(*args)

        return SimpleNamespace(remote=remote)


def test_a_model_batch_costs_two_blocking_calls_to_the_attempt_ledger(monkeypatch) -> None:
    """The model stage asks for earlier deaths and begins the batch's attempt in one call, and ends it in another
    (each call blocks the actor on a round trip to the ledger); an image that killed a worker before still makes the
    batch go image by image."""
    from pipeline.label import attempts
    from pipeline.label.model_stage import ModelSpec, ModelStage, WorkerSetup
    from san.settings import PredictionSettings

    monkeypatch.setattr(attempts.ray, "get", lambda value: value)
    calls: list[str] = []
    ledger = attempts.AttemptLedger()
    settings = PredictionSettings()
    stage = ModelStage(
        ModelSpec("null"), VOCABULARY.to_json(), settings, WorkerSetup("cpu", 1, _LocalHandle(ledger, calls))
    )
    paths = [f"/images/{i}.jpg" for i in range(4)]
    h, w = settings.resize.output_size(48, 64)
    batch = {
        "image_path": [paths],
        "error": [[""] * 4],
        "height": [np.full(4, 48)],
        "width": [np.full(4, 64)],
        "pixels": [np.zeros((4, h, w, 3), np.uint8)],
        "fingerprint": [[""] * 4],
    }
    assert calls == ["model_ready"] and ledger.models_ready() == 1, "the job's guard learns that the model is up"
    calls.clear()
    rows = stage(batch)
    assert calls == ["begin_unless_died", "end"] and rows["error"] == [""] * 4
    assert list(rows["batch_images"]) == [4] * 4 and ledger.unfinished(paths) == [0] * 4
    ledger.begin(paths[1:2])  # a worker died on image 1 before
    calls.clear()
    rows = stage(batch)
    assert calls == ["begin_unless_died"] + ["begin", "end"] * 4, "image by image"
    assert list(rows["batch_images"]) == [1] * 4 and rows["error"] == [""] * 4


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize(("batch_size", "per_block"), [(4, 16), (16, 4), (32, 2), (64, 1), (128, 1)])
def test_small_model_batches_go_several_to_a_block(batch_size: int, per_block: int) -> None:
    """Each later task and actor call takes one block of about 64 images: of 4-image batches, 16; of 16-image
    batches, 4; so that a small batch size does not multiply the calls per image."""
    count = 32
    batches = [[f"/images/{b}-{i}.jpg" for i in range(batch_size)] for b in range(count)]
    rows = {"image_path": batches, "data": [[b""] * batch_size] * count, "error": [[""] * batch_size] * count}
    table = pa.table({**rows, "fingerprint": rows["error"]}, schema=BATCH_ROW_SCHEMA)
    blocks = model_batch_blocks(ray.data.from_arrow(table), batch_size, {"num_cpus": 0.25})
    sizes = blocks.map_batches(lambda block: {"rows": [len(block["image_path"])]}, batch_size=None).take_all()
    assert [row["rows"] for row in sizes] == [per_block] * (count // per_block)
