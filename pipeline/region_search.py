"""Region search: rank a run's images by how well their best region matches a text, from the regions the run
kept (``jobs/label.py --keep-regions``), without the image model.

The score of a region ``q`` for a query is ``P(query | q) * quality(q)``: ``P`` is the query's share of SAN's
class softmax over the run's prompts (its vocabulary and added names), the query and SAN's "no class" column,
from the region's recognition embedding (``mask_embs``); ``quality`` is the region's mask quality
(:func:`pipeline.region_shards.mask_quality`), so that a region without a clear mask cannot rank high. An image
scores its best region. The text tower runs once; the rest is one matrix product per file of regions, streamed:
memory holds one file and the best ``top`` hits, whatever the run's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from san.errors import UserError
from san.modeling.prompts import get_templates, prompt_length_problem
from san.text_files import name_key

from .label.model_stage import ModelSpec
from .output_shards import read_shard, shard_files
from .outputs import MANIFEST, RunOutput
from .region_shards import REGION_DTYPES, REGION_SCHEMA, stored_regions

__all__ = ["RegionSearchError", "SearchHit", "region_scores", "run_classifier", "search_run"]

#: Images whose regions go through one matrix product (bounds its memory: 256 x 100 x 512 float32 = 52 MB).
_CHUNK_IMAGES = 256
#: A hit before its mask is read: (score, image_id, file number, row in the file, region).
_Candidate = tuple[float, int, int, int, int]
_SCAN_COLUMNS = ["image_id", "generation", "dtype", "queries", "embed_dim", "mask_embs", "mask_quality"]


class RegionSearchError(UserError):
    """A run that cannot be searched (no kept regions, an unreadable manifest); the message says why."""


@dataclass(frozen=True)
class SearchHit:
    """One image found: its best region's ``score`` (0..1), the region's index ``region`` among the model's
    queries, and its ``box`` ``(x, y, width, height)`` in pixels of the original image (``None`` when the
    region's mask has no pixel above 0.5 at that size); ``mask`` ``[H, W]`` bool at the original size."""

    image_path: str
    image_id: int
    score: float
    region: int
    box: tuple[int, int, int, int] | None
    mask: np.ndarray


def run_classifier(run: Path, query: str) -> tuple[torch.Tensor, int]:
    """The scaled classifier ``[P + 2, D]`` float32 of the run's prompts, the query and SAN's "no class" row
    (last), from the run's own model and templates, and the query's row. A query equal to one of the run's
    prompts (ignoring case and Unicode form) is that prompt's row, not a second one."""
    manifest_path = run / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        identity = manifest["identity"]
        prompts = list(RunOutput(run).read_vocabulary(RegionSearchError).prompts) + list(manifest["other_names"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RegionSearchError(f"{manifest_path}: cannot read the run's model and prompts: {error!r}") from None
    templates = identity.get("templates") or "vild"
    problem = prompt_length_problem(query, get_templates(templates))
    if problem:
        raise RegionSearchError(f"the query {problem}")
    keys = [name_key(prompt) for prompt in prompts]
    if name_key(query) in keys:
        index = keys.index(name_key(query))
    else:
        prompts, index = [*prompts, query], len(prompts)
    model = ModelSpec(identity["model"], identity.get("config")).resolved().load().eval()
    model.text_classifier.set_template_set(templates)
    with torch.inference_mode():
        return model.classifier(prompts).float(), index


def region_scores(
    mask_embs: torch.Tensor, quality: torch.Tensor, classifier: torch.Tensor, query: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images' best region scores ``[N]`` and those regions' indices ``[N]`` from their embeddings
    ``[N, Q, D]``, mask qualities ``[N, Q]`` and the classifier ``[P, D]`` (``query``: the query's row)."""
    share = torch.softmax(mask_embs.float() @ classifier.T, dim=-1)[..., query]
    return (share * quality).max(dim=1)


def _fixed_size_values(column: pa.ChunkedArray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A binary column whose values are each one ``shape`` array of ``dtype`` as one ``[N, *shape]`` array,
    without copying the values (a view of Arrow's buffer, one per chunk)."""
    parts = []
    size = int(np.prod(shape)) * dtype.itemsize
    for chunk in column.chunks:
        offsets_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], offsets_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        if np.any(np.diff(offsets) != size):
            raise ValueError(f"values of another size than {shape} of {dtype}")
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        parts.append(data.view(dtype).reshape(len(chunk), *shape))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _newest_generation(shards: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``image_id`` s of the kept regions and each one's newest ``generation`` (an image labeled again
    because its file changed has an older row too): 16 bytes per image."""
    tables = [read_shard(s, columns=["image_id", "generation"], schema=REGION_SCHEMA) for s in shards]
    grouped = pa.concat_tables(tables).group_by("image_id").aggregate([("generation", "max")]).sort_by("image_id")
    return grouped.column("image_id").to_numpy(), grouped.column("generation_max").to_numpy()


def _shard_scores(
    table: pa.Table, newest: tuple[np.ndarray, np.ndarray], classifier: torch.Tensor, query: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of one file's rows of their image's newest job: their row numbers, scores and best regions."""
    ids, generations = table.column("image_id").to_numpy(), table.column("generation").to_numpy()
    rows = np.flatnonzero(generations == newest[1][np.searchsorted(newest[0], ids)])
    if not len(rows):
        return rows, np.zeros(0, np.float32), rows
    table = table.take(rows)
    kinds = [table.column(name).unique().to_pylist() for name in ("dtype", "queries", "embed_dim")]
    if any(len(values) != 1 for values in kinds):
        raise ValueError("rows of different dtypes or sizes in one file")
    dtype, queries, dim = (values[0] for values in kinds)
    embs = _fixed_size_values(table.column("mask_embs"), REGION_DTYPES[dtype], (queries, dim))
    quality = _fixed_size_values(table.column("mask_quality"), np.dtype("<f4"), (queries,))
    scores, regions = [], []
    for start in range(0, len(rows), _CHUNK_IMAGES):
        stop = start + _CHUNK_IMAGES
        score, region = region_scores(
            torch.from_numpy(embs[start:stop]), torch.from_numpy(quality[start:stop]), classifier, query
        )
        scores.append(score.numpy())
        regions.append(region.numpy())
    return rows, np.concatenate(scores), np.concatenate(regions)


def _region_mask(row: dict[str, Any], region: int) -> np.ndarray:
    """Region ``region`` 's mask ``[H, W]`` bool at the original size, upsampled as SAN's post-processing
    upsamples masks (bilinear to the padded input, cropped to the image, bilinear to its original size)."""
    regions = stored_regions(row)
    logits = torch.from_numpy(regions.mask_preds[region].astype(np.float32))[None, None]
    padded = F.interpolate(logits, size=regions.padded_size, mode="bilinear", align_corners=False)
    image = padded[..., : regions.input_size[0], : regions.input_size[1]]
    return (F.interpolate(image, size=regions.size, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)


def search_run(
    run: str | Path, query: str, top: int = 20, progress: Callable[[int], None] | None = None
) -> list[SearchHit]:
    """The ``top`` images of the run in folder ``run`` whose best region matches ``query`` best, best first
    (an image once). ``progress`` is called with the number of images scored after each file.

    Raises:
        RegionSearchError: the run kept no regions (naming ``keep_regions``), or is no labeling run.
        pipeline.output_shards.DamagedFileError: a file of regions cannot be read (naming it).
    """
    root = Path(run)
    folder = RunOutput(root).regions_dir
    shards = shard_files(folder)
    if not shards:
        raise RegionSearchError(
            f"{root} has no kept regions ({folder.name}/ is empty or missing): label it with jobs/label.py "
            "and its `keep_regions` option to search it"
        )
    classifier, index = run_classifier(root, query)
    newest = _newest_generation(shards)
    best: list[_Candidate] = []
    for number, shard in enumerate(shards):
        table = read_shard(shard, columns=_SCAN_COLUMNS, schema=REGION_SCHEMA)
        try:
            rows, scores, regions = _shard_scores(table, newest, classifier, index)
        except ValueError as error:
            raise RegionSearchError(f"{shard}: cannot be searched: {error}") from None
        ids = table.column("image_id").to_numpy()[rows]
        order = np.lexsort((ids, -scores))  # best first, ties by image id: stable results
        _, first = np.unique(ids[order], return_index=True)  # an image twice in a file: its best row
        for i in order[np.sort(first)][:top]:
            best.append((float(scores[i]), int(ids[i]), number, int(rows[i]), int(regions[i])))
        best = _unique_best(best, top)
        if progress is not None:
            progress(len(rows))
    return _hits(shards, best)


def _unique_best(candidates: list[_Candidate], top: int) -> list[_Candidate]:
    """The ``top`` best candidates, an image once (ties broken by image id)."""
    chosen, seen = [], set()
    for candidate in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if candidate[1] not in seen:
            seen.add(candidate[1])
            chosen.append(candidate)
    return chosen[:top]


def _hits(shards: list[Path], best: list[_Candidate]) -> list[SearchHit]:
    """The hits of ``best`` with their regions' masks and boxes (each file with a hit read once)."""
    records: dict[tuple[int, int], dict[str, Any]] = {}
    for number in sorted({shard for _, _, shard, _, _ in best}):
        rows = [row for _, _, shard, row, _ in best if shard == number]
        table = read_shard(shards[number], schema=REGION_SCHEMA).take(rows)
        records |= {(number, row): record for row, record in zip(rows, table.to_pylist(), strict=True)}
    hits = []
    for score, image_id, shard, row, region in best:
        record = records[(shard, row)]
        mask = _region_mask(record, region)
        hits.append(SearchHit(record["image_path"], image_id, score, region, _box(mask), mask))
    return hits
