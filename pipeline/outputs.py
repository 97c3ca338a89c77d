"""The output directory of a labeling run: Parquet shards written atomically, resume state, and the
final merge into ``coco.json``, ``errors.parquet`` and ``manifest.json`` (:mod:`pipeline.output_finish`).

Layout::

    OUT/predictions/part-*.parquet   one row per labeled image (PREDICTION_SCHEMA; docs/labeling.md)
    OUT/errors/part-*.parquet        one row per input that could not be labeled (path, reason)
    OUT/regions/part-*.parquet       with --keep-regions: each labeled image's regions (REGION_SCHEMA), each file
                                     beside the predictions file of the same name and rows
    OUT/errors.parquet               all error rows, merged at the end
    OUT/coco.json                    COCO annotations of every labeled image (``--coco single``)
    OUT/coco/part-*.json             or one COCO file per predictions file (``--coco shards``)
    OUT/manifest.json                command, model, vocabulary, versions, counts, timings
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from san.atomic import write_atomic, write_json_atomic
from san.errors import OptionError, UserError

from .disk_space import is_out_of_space
from .exports.coco import annotation_texts
from .output_finish import COCO_FOLDER, finish_run
from .output_lock import LOCK_NAME
from .output_shards import (
    ANNOTATIONS_COLUMN,
    ERROR_SCHEMA,
    PREDICTION_SCHEMA,
    DamagedFileError,
    error_files_newest_first,
    fingerprint_key,
    first_per_path,
    newest_only,
    read_shard,
    set_aside_name,
    shard_batches,
    shard_files,
    write_shard_file,
)
from .region_shards import REGION_SCHEMA
from .vocabulary import Vocabulary, VocabularyError


class OutputConflictError(UserError):
    """The output directory holds what this run cannot continue: a run made with another vocabulary or model,
    a run whose ``manifest.json`` is lost or damaged, or files of something else."""


# The smoke test's generated images (``pipeline.label.smoke``), which a job writes into its output folder before
# its manifest.
SMOKE_INPUTS = "smoke-inputs.parquet"
# Paths reported in manifest.json when the output holds an image_path twice.
MAX_REPORTED_DUPLICATES = 100
MANIFEST = "manifest.json"
# The columns of errors.parquet.
_ERROR_COLUMNS = ["image_path", "error"]
# The prediction columns a job reads (to resume, and to write coco.json), checked before it resumes.
_JOB_COLUMNS = ["image_path", "image_id", "width", "height", "segments", "image_fingerprint", "generation"]
# Entries named when an output folder is refused for holding other files.
_SHOWN_ENTRIES = 5
# Rows of a regions file's row groups: a reader takes a few images' regions (about 0.5 MB each) at a time.
REGION_GROUP_ROWS = 16
# Identity entries that older versions did not record, and the value their runs had.
_UNRECORDED_IDENTITY = {"keep_regions": None}


class RunOutput:
    """Reads and writes one run's output directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.predictions_dir = self.root / "predictions"
        self.errors_dir = self.root / "errors"
        self.regions_dir = self.root / "regions"

    def create(self) -> bool:
        """Create the output folder (returns whether it did), or raise :class:`OptionError` saying why it
        cannot be one."""
        if self.root.exists() and not self.root.is_dir():
            raise OptionError(f"`output` {str(self.root)!r} is a file, not a folder")
        existed = self.root.is_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OptionError(f"cannot create the `output` folder {str(self.root)!r}: {error.strerror}") from error
        if not os.access(self.root, os.W_OK):
            raise OptionError(f"the `output` folder {str(self.root)!r} is not writable")
        return not existed

    def remove_if_empty(self) -> None:
        """Remove the output folder when nothing was written into it (a run that failed before starting)."""
        with contextlib.suppress(OSError):  # not empty (or gone): kept as it is
            self.root.rmdir()

    def check_compatible(self, identity: dict[str, Any]) -> None:
        """Refuse an output folder this run cannot continue, in one line that says what to do: one holding a run
        made with another vocabulary or model (its labels would mix), labels without the ``manifest.json`` that
        names what made them, a ``manifest.json`` that cannot be read, or files of something else (they would be
        replaced). An empty folder, or one a run left before writing its manifest, is a new run's."""
        manifest = self.root / MANIFEST
        if not manifest.exists():
            self._check_new()
            return
        previous = {**_UNRECORDED_IDENTITY, **self._identity(manifest)}
        changed = sorted(k for k in identity if k in previous and previous[k] != identity[k])
        if changed:
            differences = "; ".join(_difference(k, previous[k], identity[k]) for k in changed)
            raise OutputConflictError(
                f"{self.root} holds a run made with {differences}; rerun with the same vocabulary, model and "
                "options to resume it, or choose a new `output`"
            )

    def next_generation(self) -> int:
        """The number of the job about to write into the folder: 1 for its first, else the last one's plus 1
        (``manifest.json``'s ``generation``; 0 for a run of an older version). Every row a job writes carries
        it, so that the rows of an image labeled again are told from the old ones."""
        manifest = self.root / MANIFEST
        if not manifest.exists():
            return 1
        return int(json.loads(manifest.read_text(encoding="utf-8")).get("generation", 0)) + 1

    def _identity(self, manifest: Path) -> dict[str, Any]:
        """The ``identity`` of the run whose ``manifest.json`` is ``manifest``; refused when it has none."""
        try:
            content = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
            reason = error.strerror if isinstance(error, OSError) else f"not valid JSON: {error}"
            raise OutputConflictError(
                f"{manifest} cannot be read ({reason}): it names the vocabulary and model of the labels in "
                f"{self.root}; restore it from a backup to resume that run, or choose a new `output`"
            ) from None
        identity = manifest_identity(content)
        if identity is None:
            raise OutputConflictError(
                f"{manifest} is not a labeling run's manifest (it has no identity); choose a new or empty `output`"
            )
        return identity

    def _check_new(self) -> None:
        """Refuse a folder without ``manifest.json`` that holds more than a run writes before its manifest."""
        if shard_files(self.predictions_dir) or shard_files(self.errors_dir):
            raise OutputConflictError(
                f"{self.root} holds labels (predictions/, errors/) but no manifest.json, which names the "
                "vocabulary and model that made them, so the run cannot be resumed: restore manifest.json from a "
                "backup, or choose a new `output` and label again"
            )
        entries = sorted(p.name for p in self.root.iterdir() if not _made_before_manifest(p.name))
        if entries:
            shown = ", ".join(entries[:_SHOWN_ENTRIES])
            more = f" and {len(entries) - _SHOWN_ENTRIES} more" if len(entries) > _SHOWN_ENTRIES else ""
            raise OutputConflictError(
                f"`output` {self.root} is not empty ({shown}{more}) and is no labeling run's folder (it has no "
                "manifest.json): its files could be replaced; choose a new or empty folder"
            )

    def remove_partial_files(self) -> int:
        """Delete temporary files a killed run left behind; returns how many."""
        removed = 0
        for folder in (self.predictions_dir, self.errors_dir, self.regions_dir, self.root / COCO_FOLDER):
            for tmp in folder.glob(".*.tmp") if folder.exists() else []:
                tmp.unlink()
                removed += 1
        return removed

    def set_aside_damaged(self) -> dict[Path, str]:
        """Rename each prediction or error file that cannot be read (truncated, overwritten) to
        :func:`set_aside_name`, where no reader looks, so that a resumed run labels its images again; returns
        ``{file: why it cannot be read}``. What a job reads of the files is checked: label-map PNGs and regions'
        arrays are not read (that would read the whole output at every resume); a reader that meets a damaged one
        says what to do. A damaged regions file's predictions file (same name) is set aside with it, so that its
        images are labeled again, regions and all."""
        moved = {}
        checks = [
            (self.regions_dir, REGION_SCHEMA, ["image_path", "generation"]),
            (self.predictions_dir, PREDICTION_SCHEMA, _JOB_COLUMNS),
            (self.errors_dir, ERROR_SCHEMA, None),
        ]
        for folder, schema, columns in checks:
            for shard in shard_files(folder):
                try:
                    read_shard(shard, columns=columns, schema=schema)
                except DamagedFileError as damaged:
                    os.replace(shard, set_aside_name(shard))
                    moved[shard] = damaged.reason
                    partner = self.predictions_dir / shard.name
                    if folder == self.regions_dir and partner.exists():
                        os.replace(partner, set_aside_name(partner))
                        moved[partner] = f"its regions file {shard} cannot be read"
        return moved

    def labeled_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``image_id`` s of the inputs already labeled, sorted (an id twice for two input rows with one path
        and other bytes), and the :func:`fingerprint_key` of each one's ``image_fingerprint`` (0: not recorded): a
        rerun skips an input whose id and fingerprint are there, and labels again one whose file changed (inputs
        that failed are tried again). 16 bytes per image, where a set of paths would take a Python string each."""
        rows = self._current_rows(["image_id", "image_fingerprint"])
        ids = rows.column("image_id").to_numpy()
        keys = np.fromiter(map(fingerprint_key, rows.column("image_fingerprint").to_pylist()), np.int64, len(ids))
        pairs = np.unique(np.stack([ids, keys], axis=1).reshape(-1, 2), axis=0)  # sorted by id, then key
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def _newest_generations(self) -> dict[str, int]:
        """``image_path`` -> the newest ``generation`` of its prediction and error rows, for the paths whose rows
        come from more than one job (an image labeled again because its file changed; rows without a
        generation, of older versions, count as 0)."""
        tables = [
            read_shard(shard, columns=["image_path", "generation"], schema=schema)
            for folder, schema in ((self.predictions_dir, PREDICTION_SCHEMA), (self.errors_dir, ERROR_SCHEMA))
            for shard in shard_files(folder)
        ]
        if not tables:
            return {}
        table = pa.concat_tables(tables)
        table = table.set_column(1, "generation", pc.fill_null(table.column("generation"), 0))
        grouped = table.group_by("image_path").aggregate([("generation", "max"), ("generation", "count_distinct")])
        several = grouped.filter(pc.greater(grouped.column("generation_count_distinct"), 1))
        paths, newest = several.column("image_path").to_pylist(), several.column("generation_max").to_pylist()
        return dict(zip(paths, newest, strict=True))

    def _current_rows(self, columns: list[str] | None = None) -> pa.Table:
        """The prediction rows (``columns``; None for all) of each image's newest job, a path's repeats included:
        rows of an image that a later job labeled again, or failed on, are left out. By path in Arrow, not
        :mod:`pipeline.row_rules`' ids: the callers read these rows' columns (paths among them) anyway."""
        shards = shard_files(self.predictions_dir)
        wanted = columns or PREDICTION_SCHEMA.names
        if not shards:
            return PREDICTION_SCHEMA.empty_table().select(wanted)
        read = list(dict.fromkeys([*wanted, "image_path", "generation"]))
        table = pa.concat_tables(read_shard(s, columns=read, schema=PREDICTION_SCHEMA) for s in shards)
        return newest_only(table, self._newest_generations()).select(wanted)

    def write_shard(self, predictions: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        """Write one shard of each kind (when non-empty), each file appearing whole or not at all."""
        self.write_tables(
            pa.Table.from_pylist(predictions, schema=PREDICTION_SCHEMA),
            pa.Table.from_pylist(errors, schema=ERROR_SCHEMA),
        )

    def write_tables(self, predictions: pa.Table, errors: pa.Table, regions: pa.Table | None = None) -> None:
        """:meth:`write_shard` of Arrow tables (``PREDICTION_SCHEMA``, ``ERROR_SCHEMA``; ``regions``:
        ``REGION_SCHEMA`` rows of the same images, in the same order): what the job's writer tasks call, on any node
        that sees the output folder. The regions file is written first, under the name its predictions file then
        gets: an image counts as labeled (and is skipped on resume) only once both are there. A predictions file
        also holds each image's COCO annotations as text (``ANNOTATIONS_COLUMN``), which the end of the run
        stitches into its COCO files."""
        if regions is not None and regions.num_rows:
            write_shard_file(regions.cast(REGION_SCHEMA), self.regions_dir, REGION_GROUP_ROWS)
        if predictions.num_rows:
            predictions = predictions.cast(PREDICTION_SCHEMA)
            predictions = predictions.append_column(ANNOTATIONS_COLUMN, annotation_texts(predictions))
            write_shard_file(predictions, self.predictions_dir)
        if errors.num_rows:
            write_shard_file(errors.cast(ERROR_SCHEMA), self.errors_dir)

    def read_predictions(self, columns: list[str] | None = None) -> pa.Table:
        """All prediction rows, one per image: its newest job's (a duplicate left by an interrupted write, or
        a second input row with its path, is dropped)."""
        wanted = columns or PREDICTION_SCHEMA.names
        rows = self._current_rows(list(dict.fromkeys([*wanted, "image_path"])))
        return first_per_path(rows).select(wanted)

    def iter_predictions(self, columns: list[str] | None = None, batch_rows: int = 64) -> Iterator[dict[str, Any]]:
        """The prediction rows of :meth:`read_predictions` (``columns``, which must hold ``image_path``; None for
        all) as dicts, one at a time: at most ``batch_rows`` rows are read into memory at once."""
        seen: set[str] = set()
        newest = self._newest_generations()
        wanted = columns or PREDICTION_SCHEMA.names
        read = list(dict.fromkeys([*wanted, "generation"]))
        for shard in shard_files(self.predictions_dir):
            for table in shard_batches(shard, read, batch_rows):
                yield from first_per_path(newest_only(table, newest), seen).select(wanted).to_pylist()

    def read_vocabulary(self, error: type[Exception]) -> Vocabulary:
        """The run's vocabulary, from its ``manifest.json``.

        Raises:
            error: the folder has no ``manifest.json`` (it is no labeling run's output), or its vocabulary
                cannot be read (naming the manifest).
        """
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise error(f"{self.root} is not a labeling run's output: it has no manifest.json")
        try:
            return Vocabulary.from_json(json.loads(manifest.read_text(encoding="utf-8"))["vocabulary"])
        except (OSError, ValueError, KeyError, TypeError, VocabularyError) as exc:  # ValueError: bad JSON or UTF-8
            raise error(f"{manifest}: cannot read the run's vocabulary: {exc!r}") from None

    def read_errors(self) -> pa.Table:
        """All error rows (``image_path``, ``error``), one per input: the newest reason when a rerun failed on it
        again."""
        shards = error_files_newest_first(self.errors_dir)
        if not shards:
            return ERROR_SCHEMA.empty_table().select(_ERROR_COLUMNS)
        tables = (read_shard(s, columns=_ERROR_COLUMNS, schema=ERROR_SCHEMA) for s in shards)
        return first_per_path(pa.concat_tables(tables))

    def finalize(self, vocabulary: Vocabulary, manifest: dict[str, Any], coco: str = "single") -> dict[str, int]:
        """Merge the shards into ``coco.json`` (or one COCO file per shard, or none: ``coco``, one of
        :data:`~pipeline.output_finish.COCO_CHOICES`) and ``errors.parquet``, and write ``manifest.json`` (with
        ``duplicate_paths``, up to :data:`MAX_REPORTED_DUPLICATES` paths labeled twice, when there are any);
        returns the counts. Prediction rows of an image a later job labeled again (or failed on) are first removed
        from their files, and so are regions rows without their predictions row (:meth:`_remove_unmatched_regions`).
        Driver memory stays constant (a few bytes per image): :mod:`pipeline.output_finish`."""
        counts, duplicate_paths = finish_run(
            self.root, self.predictions_dir, self.errors_dir, vocabulary, coco, MAX_REPORTED_DUPLICATES
        )
        self._remove_unmatched_regions()
        manifest = {**manifest, "counts": {**manifest.get("counts", {}), **counts}}
        if duplicate_paths:
            manifest["duplicate_paths"] = duplicate_paths
        write_json_atomic(manifest, self.root / MANIFEST, indent=2)
        return counts

    def _remove_unmatched_regions(self) -> None:
        """Rewrite (each atomically) the regions files that hold rows whose image has no predictions row of that
        generation in the predictions file of the same name: rows of an image labeled again, and the file of a
        job stopped between writing a regions file and its predictions file (its images were labeled again)."""
        for shard in shard_files(self.regions_dir):
            partner = self.predictions_dir / shard.name
            if not partner.exists():
                shard.unlink()
                continue
            current = read_shard(partner, columns=["image_path", "generation"], schema=PREDICTION_SCHEMA)
            keys = read_shard(shard, columns=["image_path", "generation"], schema=REGION_SCHEMA)
            keep = pc.is_in(_row_keys(keys), value_set=_row_keys(current))
            if pc.all(keep).as_py():
                continue
            table = read_shard(shard, schema=REGION_SCHEMA).filter(keep)
            if table.num_rows:
                write_atomic(shard, functools.partial(pq.write_table, table, row_group_size=REGION_GROUP_ROWS))
            else:
                shard.unlink()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, self.root / MANIFEST, indent=2)

    def record_end(self, manifest: dict[str, Any]) -> bool:
        """Write the manifest of a run that stopped (``status`` and ``error`` set); returns whether it was written.

        On a full disk the atomic write, which needs room for a second copy, fails: the manifest is then
        overwritten in place when the new text fits in the blocks the file already has (no new block is
        needed), else left as it was (``False``)."""
        try:
            self.write_manifest(manifest)
            return True
        except OSError as error:
            if not is_out_of_space(error):
                raise
        path = self.root / MANIFEST
        text = json.dumps(manifest, ensure_ascii=False, allow_nan=False, indent=2).encode("utf-8")
        try:
            if len(text) > path.stat().st_blocks * 512:
                return False
            with open(path, "r+b") as handle:
                handle.write(text)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            return False
        return True


# Identity entries that are digests: a change is named, not shown.
_DIGESTS = {"vocabulary": "a different vocabulary (names or synonyms)", "other_names": "different `other` names"}


def _difference(key: str, run: Any, command: Any) -> str:
    """One changed identity entry, worded for the user (``class_min_scores`` are the vocabulary's ``@`` scores)."""
    if key in _DIGESTS:
        return _DIGESTS[key]
    name = "the vocabulary's minimum scores (@)" if key == "class_min_scores" else f"`{key}`"
    return f"{name} {json.dumps(run)} (this command: {json.dumps(command)})"


def _row_keys(table: pa.Table) -> pa.Array:
    """Each row's ``image_path`` and ``generation`` (null as 0) as one string, to match rows of two files."""
    generations = pc.cast(pc.fill_null(table.column("generation"), 0), pa.string())
    return pc.binary_join_element_wise(generations, table.column("image_path"), "\0")


def manifest_identity(content: Any) -> dict[str, Any] | None:
    """The run's ``identity`` in a parsed ``manifest.json`` (``None`` when it is no labeling run's manifest): what
    makes a folder a labeling run's output."""
    identity = content.get("identity") if isinstance(content, dict) else None
    return identity if isinstance(identity, dict) else None


def _made_before_manifest(name: str) -> bool:
    """Whether an entry of the output folder is one a labeling job writes before its ``manifest.json`` (its lock,
    with filelock's own files beside it, and the smoke test's images: a job stopped that early leaves them), or
    the temporary file of an atomic write a kill left behind."""
    return name == SMOKE_INPUTS or name.startswith(LOCK_NAME) or (name.startswith(".") and name.endswith(".tmp"))
