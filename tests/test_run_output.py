"""The labeling run's output folder and options, without Ray: bad values are refused before anything
starts, a rerun retries failed inputs, and the newest reason of a repeated failure is kept."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import flag
from pipeline.label.inputs import InputError
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.outputs import RunOutput
from pipeline.vocabulary import parse_vocabulary
from san.errors import OptionError


def options(tmp_path: Path, **overrides) -> LabelOptions:
    given = {"vocab": str(tmp_path / "vocab.txt"), "input": str(tmp_path / "images"), "output": str(tmp_path / "out")}
    return LabelOptions(**{**given, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"shard_size": -2}, "--shard-size must be at least 1, got -2"),
        ({"short_side": 0}, "--short-side must be at least 1, got 0"),
        ({"max_size": 500}, r"--max-size \(500\) must not be smaller than --short-side \(640\)"),
        ({"limit": -1}, "--limit must be 0 or more, got -1"),
        ({"dtype": "int8"}, "--dtype must be one of"),
        ({"input": None}, "--input is required"),
        ({"workers": (0, 0)}, r"--workers must be N or MIN-MAX with 1 <= MIN <= MAX, got 0-0"),
        ({"workers": (3, 1)}, r"--workers must be N or MIN-MAX with 1 <= MIN <= MAX, got 3-1"),
        ({"tta_sizes": (320, 0)}, r"--tta-sizes must be short sides from 1 to 4480, got \(320, 0\)"),
        ({"tta_sizes": (480, 480)}, r"--tta-sizes names a size twice"),
        ({"other": "no-such-list.txt"}, r"--other 'no-such-list.txt' is neither one of coco-all, coco-stuff, none"),
    ],
)
def test_impossible_options_are_refused_naming_the_flag(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(OptionError) as error:
        options(tmp_path, **overrides)
    assert re.match(message, error.value.worded(flag)), error.value.worded(flag)
    field_named = re.sub(r"--([a-z-]+)", lambda match: match[1].replace("-", "_"), message)
    assert re.match(field_named, str(error.value)), "the library names the field, not the flag"


def test_default_options_pass(tmp_path: Path) -> None:
    options(tmp_path)
    options(tmp_path, limit=0)
    options(tmp_path, input=None, smoke_test=True)  # the smoke test generates its inputs
    assert options(tmp_path).other == "coco-stuff" and options(tmp_path, smoke_test=True).other == "none"


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OptionError, match="is a file, not a folder"):
        RunOutput(tmp_path / "taken").create()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OptionError, match="cannot create the output folder"):
        RunOutput(locked / "out").create()


def test_output_folder_is_created(tmp_path: Path) -> None:
    assert RunOutput(tmp_path / "a" / "b").create()
    assert (tmp_path / "a" / "b").is_dir()
    assert not RunOutput(tmp_path / "a" / "b").create(), "it existed"


def test_a_run_that_fails_early_leaves_no_output_folder_it_created(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("cat\n")
    with pytest.raises(InputError, match="does not exist"):
        run_label_job(options(tmp_path, input=str(tmp_path / "missing")))
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made is kept, empty or not
    with pytest.raises(InputError, match="does not exist"):
        run_label_job(options(tmp_path, input=str(tmp_path / "missing"), output=str(tmp_path / "empty")))
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir()), "and left as it was"


def prediction(path: str) -> dict:
    return {"image_path": path, "image_id": 1, "width": 2, "height": 2, "label_map_png": b"", "segments": []}


def test_a_rerun_skips_labeled_inputs_and_retries_failed_ones(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    output.write_shard([prediction("a.jpg")], [{"image_path": "b.jpg", "error": "file not found"}])
    output.write_shard([{**prediction("c.jpg"), "image_id": 7}, prediction("a.jpg")], [])
    assert output.labeled_ids().tolist() == [1, 7], "sorted, each image once"


def test_the_newest_reason_of_a_repeated_failure_is_kept(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    output.write_shard([], [{"image_path": "b.jpg", "error": "file not found"}])
    first = next(output.errors_dir.glob("part-*.parquet"))
    past = time.time() - 60
    os.utime(first, (past, past))
    output.write_shard([], [{"image_path": "b.jpg", "error": "truncated image"}])
    assert output.read_errors().to_pylist() == [{"image_path": "b.jpg", "error": "truncated image"}]


def test_predictions_read_whole_or_streamed_keep_the_first_row_per_image(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    output.write_shard([prediction("a.jpg"), {**prediction("b.jpg"), "image_id": 2}], [])
    output.write_shard([{**prediction("a.jpg"), "image_id": 3}, {**prediction("c.jpg"), "image_id": 4}], [])
    columns = ["image_path", "image_id"]
    shards = sorted(output.predictions_dir.glob("part-*.parquet"))
    rows = [row for shard in shards for row in pq.read_table(shard, columns=columns).to_pylist()]
    first = [row for i, row in enumerate(rows) if row["image_path"] not in {r["image_path"] for r in rows[:i]}]
    assert len(rows) == 4 and len(first) == 3
    assert output.read_predictions(columns).to_pylist() == first
    assert list(output.iter_predictions(columns, batch_rows=1)) == first


class Refused(ValueError):
    pass


def test_the_run_vocabulary_is_read_from_the_manifest(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    with pytest.raises(Refused, match="is not a labeling run's output: it has no manifest.json"):
        output.read_vocabulary(Refused)
    vocabulary = parse_vocabulary("cat: kitten\nsky\n", "v")
    output.write_manifest({"vocabulary": vocabulary.to_json()})
    assert output.read_vocabulary(Refused) == vocabulary
    output.write_manifest({"vocabulary": {"names": "cat"}})
    with pytest.raises(Refused, match=r"manifest.json: cannot read the run's vocabulary"):
        output.read_vocabulary(Refused)
