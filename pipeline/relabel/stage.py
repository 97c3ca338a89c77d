"""The relabeling job's Ray Data stages: the images of each row group of the source run's regions files not
relabeled yet (:class:`ListRegions`), then their label maps from their regions (:class:`RelabelStage`), as rows of
the labeling job's model stage, which the labeling job's own encode and write stages take from there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from san.settings import PredictionSettings

from ..label.model_stage import image_result
from ..label.resume import labeled_before
from ..output_shards import PREDICTION_SCHEMA, read_shard, reading_shard
from ..region_shards import StoredRegions, stored_regions
from ..vocabulary import Vocabulary

#: The columns of :class:`RelabelStage`'s rows (those of the labeling job's model stage), in order.
OUTPUT_COLUMNS = ("image_path", "error", "height", "width", "label_map", "class_scores", "batch_images", "fingerprint")


def row_groups(files: list[Path]) -> list[dict[str, Any]]:
    """One item ``{"file", "group"}`` per row group of each regions file (read from the files' footers): the
    units the relabeling job's tasks take."""
    items = []
    for file in files:
        with reading_shard(file):
            groups = pq.ParquetFile(file).num_row_groups
        items += [{"file": str(file), "group": group} for group in range(groups)]
    return items


@dataclass
class ListRegions:
    """CPU stage: :func:`row_groups` items -> one row per image of the group not relabeled yet (``file``, ``group``,
    ``row``: its index in the group, ``image_path``, ``fingerprint``); the run's
    :class:`~pipeline.label.resume.ListingTally` counts them, and those skipped.

    A regions row counts when the predictions file of its name (in ``predictions_dir``) holds a row of its path and
    generation, whose ``image_fingerprint`` it takes, so that the new run records the file its labels come from.
    ``done``: the new run's images already relabeled (:meth:`~pipeline.outputs.RunOutput.labeled_ids`, a Ray
    object), skipped as the labeling job skips them."""

    predictions_dir: str
    done: ray.ObjectRef
    tally: ray.actor.ActorHandle

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows: dict[str, list[Any]] = {"file": [], "group": [], "row": [], "image_path": [], "fingerprint": []}
        for file, group in zip(batch["file"], batch["group"], strict=True):
            current = self._current_rows(str(file), int(group))
            paths, fingerprints = [path for _, path, _ in current], [fingerprint for _, _, fingerprint in current]
            found, _ = labeled_before(paths, fingerprints, ray.get(self.done))
            ray.get(self.tally.add.remote(len(paths), int(found.sum())))
            for (row, path, fingerprint), skip in zip(current, found, strict=True):
                if not skip:
                    for name, value in zip(rows, (str(file), int(group), row, path, fingerprint), strict=True):
                        rows[name].append(value)
        return {
            name: np.asarray(values, dtype=np.int64 if name in ("group", "row") else object)
            for name, values in rows.items()
        }

    def _current_rows(self, file: str, group: int) -> list[tuple[int, str, str]]:
        """``(row, image_path, fingerprint)`` of each row of row group ``group`` of the regions ``file`` that counts
        (see the class)."""
        partner = Path(self.predictions_dir) / Path(file).name
        if not partner.exists():
            return []
        columns = ["image_path", "generation", "image_fingerprint"]
        predictions = read_shard(partner, columns=columns, schema=PREDICTION_SCHEMA)
        recorded = dict(zip(_keys(predictions), predictions.column("image_fingerprint").to_pylist(), strict=True))
        with reading_shard(Path(file)):
            regions = pq.ParquetFile(file).read_row_group(group, columns=["image_path", "generation"])
        return [(row, key[0], recorded[key] or "") for row, key in enumerate(_keys(regions)) if key in recorded]


def _keys(table: pa.Table) -> list[tuple[str, int]]:
    """Each row's ``(image_path, generation)``."""
    return list(zip(table.column("image_path").to_pylist(), table.column("generation").to_pylist(), strict=True))


@dataclass
class RelabelStage:
    """CPU stage: rows of :class:`ListRegions` -> each image's label map and class scores from its regions, as rows
    of :class:`~pipeline.label.model_stage.ModelStage` (:data:`OUTPUT_COLUMNS`; ``batch_images`` 0: no model call).

    ``classifier``: a Ray object, the scaled classifier weights ``[P + A + 1, D]`` (float32) of the vocabulary's
    prompts and the added ``other`` names (:attr:`san.predictor.Predictor.classifier`); ``threads``: the torch
    threads to compute with (those of the source run's workers: see
    :attr:`~pipeline.relabel.source.SourceRun.threads`). Regions stored in float16 are computed in float32."""

    classifier: ray.ObjectRef
    vocabulary: dict[str, Any]
    settings: PredictionSettings
    threads: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch  # here: the job's driver needs no torch for its stages

        from san.modeling.postprocess import ImageRegions
        from san.predictor import PromptClasses, RegionLabeler

        torch.set_num_threads(self.threads)
        vocabulary = Vocabulary.from_json(self.vocabulary)
        classes = PromptClasses(vocabulary.prompts, vocabulary.prompt_to_class, self.settings)
        labeler = RegionLabeler(torch.from_numpy(np.array(ray.get(self.classifier))), classes)  # a writable copy
        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS}
        for regions, fingerprint in _read_regions(batch):
            arrays = [torch.from_numpy(np.array(a, np.float32)) for a in (regions.mask_preds, regions.mask_embs)]
            [labels] = labeler.predict([ImageRegions(*arrays, regions.padded_size, regions.input_size)], [regions.size])
            result = image_result(labels)
            values = (regions.image_path, "", *regions.size, result.label_map, result.class_scores, 0, fingerprint)
            for name, value in zip(OUTPUT_COLUMNS, values, strict=True):
                out[name].append(value)
        return out


def _read_regions(batch: dict[str, np.ndarray]) -> Iterator[tuple[StoredRegions, str]]:
    """The regions and fingerprint of each row of ``batch``, one row group in memory at a time."""
    wanted: dict[tuple[str, int], dict[int, str]] = {}
    columns = (batch[name] for name in ("file", "group", "row", "fingerprint"))
    for file, group, row, fingerprint in zip(*columns, strict=True):
        wanted.setdefault((str(file), int(group)), {})[int(row)] = str(fingerprint)
    for (file, group), rows in wanted.items():
        with reading_shard(Path(file)):
            table = pq.ParquetFile(file).read_row_group(group)
        for row, record in zip(rows, table.take(pa.array(list(rows), pa.int64())).to_pylist(), strict=True):
            yield stored_regions(record), rows[row]
