"""The labeling run's output folder and options, without Ray: bad values are refused before anything
starts, a rerun retries failed inputs, and the newest reason of a repeated failure is kept."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import flag
from pipeline.label.inputs import InputError
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.output_lock import LOCK_NAME
from pipeline.outputs import SMOKE_INPUTS, OutputConflictError, RunOutput
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
        ({"coco": "all"}, r"--coco must be one of \['single', 'shards', 'none'\], got 'all'"),
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
        run_label_job(options(tmp_path, input=str(tmp_path / "missing"), smoke_test=True))
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made is kept, empty or not
    with pytest.raises(InputError, match="does not exist"):
        run_label_job(
            options(tmp_path, input=str(tmp_path / "missing"), output=str(tmp_path / "empty"), smoke_test=True)
        )
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir()), "and left as it was"


def prediction(path: str) -> dict:
    return {"image_path": path, "image_id": 1, "width": 2, "height": 2, "label_map_png": b"", "segments": []}


def test_a_rerun_skips_labeled_inputs_and_retries_failed_ones(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    output.write_shard([prediction("a.jpg")], [{"image_path": "b.jpg", "error": "file not found"}])
    output.write_shard([{**prediction("c.jpg"), "image_id": 7}, prediction("a.jpg")], [])
    ids, fingerprints = output.labeled_ids()
    assert ids.tolist() == [1, 7] and fingerprints.tolist() == [0, 0], "sorted, each image once"


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


@pytest.fixture
def ray_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job must stop before it starts Ray (and before it writes anything)."""
    import pipeline.label.job

    monkeypatch.setattr(pipeline.label.job, "init_ray", lambda: pytest.fail("the job went on to start Ray"))


def write_inputs(tmp_path: Path, vocabulary: str = "cat\n") -> None:
    (tmp_path / "vocab.txt").write_text(vocabulary)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_that_is_no_run_is_refused_and_left_as_it_was(tmp_path: Path, ray_unused: None) -> None:
    write_inputs(tmp_path)
    out = tmp_path / "out"
    (out / "errors").mkdir(parents=True)
    (out / "coco.json").write_text('{"mine": true}')
    (out / "errors" / "keep.txt").write_text("x")
    for i in range(6):
        (out / f"notes{i}.txt").write_text("y")
    before = folder_state(out)
    with pytest.raises(OutputConflictError) as error:
        run_label_job(options(tmp_path, smoke_test=True))
    message = str(error.value)
    assert message == (
        f"output {out} is not empty (coco.json, errors, notes0.txt, notes1.txt, notes2.txt and 3 more) and is no "
        "labeling run's folder (it has no manifest.json): its files could be replaced; choose a new or empty folder"
    )
    assert folder_state(out) == before and not (out / LOCK_NAME).exists()


def test_labels_without_their_manifest_or_with_a_damaged_one_are_not_resumed(tmp_path: Path, ray_unused: None) -> None:
    write_inputs(tmp_path, "dog\n")
    out = RunOutput(tmp_path / "out")
    out.write_shard([prediction("a.jpg")], [])
    with pytest.raises(OutputConflictError, match=r"holds labels \(predictions/, errors/\) but no manifest.json, "):
        run_label_job(options(tmp_path, smoke_test=True))
    (out.root / "manifest.json").write_text('{"status": "complete", "ident')
    with pytest.raises(OutputConflictError) as error:
        run_label_job(options(tmp_path, smoke_test=True))
    assert str(error.value).startswith(f"{out.root / 'manifest.json'} cannot be read (not valid JSON: Unterminated")
    assert "restore it from a backup to resume that run, or choose a new output" in str(error.value)
    (out.root / "manifest.json").write_text('{"made by": "another tool"}')
    with pytest.raises(OutputConflictError, match="is not a labeling run's manifest"):
        run_label_job(options(tmp_path, smoke_test=True))


def test_what_a_job_leaves_before_its_manifest_does_not_block_a_rerun(tmp_path: Path) -> None:
    out = RunOutput(tmp_path / "out")
    out.root.mkdir(parents=True)
    (out.root / SMOKE_INPUTS).write_bytes(b"PAR1")
    (out.root / LOCK_NAME).write_text("")
    (out.root / ".manifest.json.0123.tmp").write_text("{")
    out.check_compatible({"model": "x"})
    out.write_manifest({"identity": {"model": "x"}})
    out.check_compatible({"model": "x"})
    with pytest.raises(OutputConflictError, match='made with model "x" \\(this command: "y"\\)'):
        out.check_compatible({"model": "y"})


def test_an_input_in_a_run_folder_is_refused_naming_it(tmp_path: Path, ray_unused: None) -> None:
    """One rule: a run's folder is never listed. So an --output equal to --input, or holding it, is refused
    (an --output inside --input is left out of its listing: tests/test_inputs.py)."""
    write_inputs(tmp_path)
    images = tmp_path / "images"
    before = folder_state(images)
    with pytest.raises(InputError) as error:
        run_label_job(options(tmp_path, output=str(images), smoke_test=True))
    assert error.value.worded(flag) == (
        f"--input {str(images)!r} is or lies in the --output folder {images}: a labeling run's folder is never listed "
        "as input (its files are labels, not images); give an --input outside it, or an --output outside the "
        "--input folder"
    )
    with pytest.raises(InputError, match=f"is or lies in the output folder {tmp_path}: "):
        run_label_job(options(tmp_path, output=str(tmp_path), smoke_test=True))
    run = RunOutput(tmp_path / "old-run")
    run.write_manifest({"identity": {"model": "x"}})
    (run.root / "review-masks").mkdir()
    with pytest.raises(InputError, match=f"is or lies in the labeling run folder {run.root} \\(it has manifest"):
        run_label_job(options(tmp_path, input=f"{run.root}/review-masks/**/*.png", smoke_test=True))
    assert folder_state(images) == before and not (tmp_path / "out").exists()


def test_a_files_batches_hold_the_columns_asked_for_in_order(tmp_path: Path) -> None:
    """``shard_batches``: ``rows`` at a time, the columns in the order asked for, one the file lacks (written by an
    older version) as nulls; a file that is not Parquet is named as every reader names it."""
    from pipeline.output_shards import DamagedFileError, shard_batches

    old = tmp_path / "part-old.parquet"
    pq.write_table(pa.Table.from_pylist([prediction(f"{i}.jpg") for i in range(5)]).drop_columns(["width"]), old)
    tables = list(shard_batches(old, ["width", "image_path"], 2))
    assert [t.num_rows for t in tables] == [2, 2, 1] and all(t.column_names == ["width", "image_path"] for t in tables)
    assert [r for t in tables for r in t.to_pylist()] == [{"width": None, "image_path": f"{i}.jpg"} for i in range(5)]
    old.write_bytes(b"not parquet")
    with pytest.raises(DamagedFileError, match=rf"^{re.escape(str(old))} cannot be read \(.*; rename it to _part-old"):
        next(shard_batches(old, ["image_path"], 2))


def test_a_damaged_file_is_named_in_one_line_and_set_aside(tmp_path: Path) -> None:
    from pipeline.output_shards import DamagedFileError

    output = RunOutput(tmp_path)
    output.write_shard([prediction("a.jpg")], [{"image_path": "b.jpg", "error": "file not found"}])
    output.write_shard([{**prediction("c.jpg"), "image_id": 7}], [])
    output.write_shard([{**prediction("d.jpg"), "image_id": 9}], [])
    shards = {pq.read_table(s).column("image_path")[0].as_py(): s for s in output.predictions_dir.glob("part-*")}
    truncated, garbage = shards["c.jpg"], shards["d.jpg"]
    truncated.write_bytes(truncated.read_bytes()[:-40])
    garbage.write_bytes(os.urandom(300))
    [errors] = output.errors_dir.glob("part-*.parquet")
    errors.write_bytes(b"")
    readers = (output.read_predictions, output.labeled_ids, output.read_errors, lambda: list(output.iter_predictions()))
    for read in readers:
        with pytest.raises(DamagedFileError, match=r"^/\S+/part-\w+\.parquet cannot be read \(") as error:
            read()
        assert "\n" not in str(error.value) and str(error.value).endswith(
            f".parquet.corrupt and rerun the labeling command on {tmp_path} to label its images again"
        )
        assert re.search(r"; rename it to _part-\w+\.parquet\.corrupt and rerun", str(error.value))
    moved = output.set_aside_damaged()
    assert sorted(moved) == sorted([truncated, garbage, errors])
    assert "Parquet magic bytes not found" in moved[garbage]
    assert all(shard.with_name(f"_{shard.name}.corrupt").is_file() and not shard.exists() for shard in moved)
    assert pq.read_table(output.predictions_dir).num_rows == 1, "pyarrow's folder reader leaves them out too"
    assert output.set_aside_damaged() == {}
    assert output.read_predictions(["image_path"]).to_pylist() == [{"image_path": "a.jpg"}]
    assert output.labeled_ids()[0].tolist() == [1] and output.read_errors().num_rows == 0


def test_a_stopped_run_is_recorded_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no room for a second copy, the manifest is overwritten in place, when it fits in its own blocks."""
    import errno
    import json

    import san.atomic

    output = RunOutput(tmp_path)
    running = {"status": "running", "identity": {"model": "x"}}
    output.write_manifest(running)

    def no_space(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(san.atomic, "write_atomic", no_space)
    failed = {**running, "status": "failed", "error": "OutputFullError: no space left"}
    assert output.record_end(failed)
    assert json.loads((tmp_path / "manifest.json").read_text()) == failed
    assert not output.record_end({**failed, "error": "x" * 100_000}), "more than its blocks hold: left as it was"
    assert json.loads((tmp_path / "manifest.json").read_text()) == failed


def test_an_image_whose_bytes_changed_is_labeled_again_and_kept_once(tmp_path: Path) -> None:
    """Resume matches an input by path and fingerprint: the bytes' hash for an image stored in Parquet or
    WebDataset (files: size and mtime, tests/test_label_job.py); the newest job's row of an image wins."""
    import json

    from pipeline.label.inputs import image_fingerprint, image_id
    from pipeline.label.resume import labeled_before
    from pipeline.vocabulary import parse_vocabulary

    old, new = image_fingerprint("a.png", b"old bytes"), image_fingerprint("a.png", b"new bytes")
    assert old == f"sha256:{hashlib.sha256(b'old bytes').hexdigest()}"

    def row(path: str, fingerprint: str | None, generation: int | None, width: int = 2) -> dict:
        return {**prediction(path), "image_id": image_id(path), "width": width} | {
            "image_fingerprint": fingerprint,
            "generation": generation,
        }

    output = RunOutput(tmp_path)
    output.write_manifest({"identity": {}, "generation": 1})
    assert output.next_generation() == 2
    output.write_shard([row("a.png", old, 1), row("b.png", None, None), row("c.png", old, 1)], [])  # b: older version
    paths = ["a.png", "a.png", "b.png", "c.png", "d.png"]
    found, changed = labeled_before(paths, [old, new, new, old, new], output.labeled_ids())
    assert found.tolist() == [True, False, True, True, False] and changed.tolist() == [False, True, False, False, False]

    # The next job labels a.png again (new bytes, new size) and fails on c.png (changed, now undecodable).
    output.write_shard([row("a.png", new, 2, width=5), row("d.png", new, 2)], [])
    output.write_shard([], [{"image_path": "c.png", "error": "cannot decode image", "generation": 2}])
    current = output.read_predictions(["image_path", "width"]).to_pylist()
    assert sorted(current, key=str) == sorted(
        [{"image_path": "a.png", "width": 5}, {"image_path": "b.png", "width": 2}, {"image_path": "d.png", "width": 2}],
        key=str,
    )
    assert labeled_before(["a.png", "c.png"], [new, old], output.labeled_ids())[0].tolist() == [True, False]
    counts = output.finalize(parse_vocabulary("cat\n"), {"status": "complete"})
    assert counts == {"labeled": 3, "failed": 1, "duplicates": 0}
    raw = pq.read_table(output.predictions_dir).select(["image_path", "width"]).to_pylist()
    assert sorted(raw, key=str) == sorted(current, key=str), "the old rows are gone from the files too"
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert sorted((image["file_name"], image["width"]) for image in coco["images"]) == [
        ("a.png", 5),
        ("b.png", 2),
        ("d.png", 2),
    ]
    assert pq.read_table(tmp_path / "errors.parquet").to_pylist() == [
        {"image_path": "c.png", "error": "cannot decode image"}
    ]
