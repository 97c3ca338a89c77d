"""The relabeling job: a labeling run's kept regions (``jobs/label.py --keep-regions``) and a new vocabulary in, a
complete run folder out, as ``jobs/label.py`` would write it with that vocabulary and the source run's options
(Parquet, ``coco.json``, ``errors.parquet``, ``manifest.json`` naming the source run), without decoding an image or
running the image model.

The driver runs the model's text tower once (the classifier weights of the new prompts, ``[P + A + 1, D]``) and
passes it to Ray Data CPU tasks: the row groups of the source's regions files -> the images not relabeled yet
(``resume``, as the labeling job skips them) -> label maps and class scores from the regions (the model library's
:class:`~san.predictor.RegionLabeler`, the post-processing the labeling job runs) -> the labeling job's own encode
and write stages. The run around the stages (output lock, resume, manifest, the final merge) is the labeling
job's: :func:`~pipeline.label.job.run_stages`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from san.settings import PredictionSettings

from ..label.encode import EncodeStage
from ..label.job import in_output_folder, prepare_output, run_identity, run_stages, versions, vocabulary_and_other
from ..label.model_stage import SMOKE_MODEL, ModelSpec
from ..label.options import LabelOptions
from ..label.resources import init_ray
from ..label.write import WriteStage
from ..output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA
from ..outputs import RunOutput
from ..vocabulary import Vocabulary
from .options import RelabelOptions
from .source import SourceRun
from .stage import ListRegions, RelabelStage, row_groups

# Upper bound on the blocks of the row-group items (each costs some scheduling overhead).
MAX_ITEM_BLOCKS = 10_000


def run_relabel_job(options: RelabelOptions) -> dict[str, Any]:
    """Relabel the run ``options.run`` into ``options.output`` (resuming an earlier relabel there); returns the
    manifest. Refused in one line before anything is written: a folder that is no finished labeling run, a run
    labeled without ``keep_regions``, an ``output`` holding a run of another vocabulary or other options."""
    source = SourceRun.open(options.run)
    own = {name: getattr(options, name) for name in ("other", "min_score", "templates")}
    fresh = source.label_options(
        vocab=options.vocab,
        output=options.output,
        keep_regions=None,
        limit=options.limit,
        shard_size=options.shard_size,
        progress=options.progress,
        command=options.command,
        **{name: value for name, value in own.items() if value is not None},
    )
    vocabulary, other = vocabulary_and_other(fresh)
    settings = fresh.prediction_settings(vocabulary, other)
    recorded = SMOKE_MODEL if fresh.smoke_test else fresh.model
    model = ModelSpec(options.model or recorded, fresh.config).resolved()
    output = RunOutput(options.output)
    identity = run_identity(vocabulary, recorded, fresh.config, fresh.other, settings, None)

    def relabel() -> dict[str, Any]:
        return _relabel(options, source, fresh, output, identity, vocabulary, other, settings, model)

    return in_output_folder(output, relabel)


def _relabel(
    options: RelabelOptions,
    source: SourceRun,
    fresh: LabelOptions,
    output: RunOutput,
    identity: dict[str, Any],
    vocabulary: Vocabulary,
    other: list[str],
    settings: PredictionSettings,
    model: ModelSpec,
) -> dict[str, Any]:
    """:func:`run_relabel_job` in an output folder that this job holds; ``fresh``: the options of the labeling run
    this one stands for."""
    started = time.time()
    generation, damaged = prepare_output(output, identity)
    classifier = text_classifier(model, vocabulary, settings, source.threads)
    init_ray()
    manifest: dict[str, Any] = {
        "status": "running",
        "generation": generation,
        "command": options.command,
        "identity": identity,
        "options": {k: v for k, v in asdict(fresh).items() if k != "command"},
        "relabeled_from": {
            "run": str(source.output.root.resolve()),
            "generation": source.manifest.get("generation"),
            "regions": source.regions_dtype,
            "options": {k: v for k, v in asdict(options).items() if k != "command"},
        },
        "input": source.manifest.get("input"),  # the images, for reviews and exports (pipeline.run_images)
        "vocabulary": vocabulary.to_json(),
        "other_names": other,
        "resources": {"device": "cpu", "threads_per_worker": source.threads},
        "versions": versions(),
    }

    def build(done: ray.ObjectRef, tally: ray.actor.ActorHandle) -> ray.data.Dataset:
        _copy_errors(source, output, generation)  # after the manifest: a folder with labels always has one
        stage = RelabelStage(ray.put(classifier), vocabulary.to_json(), settings, source.threads)
        return _build_dataset(options, source, done, tally, vocabulary, stage, generation)

    return run_stages(output, manifest, damaged, vocabulary, options, build, started, desc="relabeling")


def text_classifier(model: ModelSpec, vocabulary: Vocabulary, settings: PredictionSettings, threads: int) -> np.ndarray:
    """The scaled classifier weights ``[P + A + 1, D]`` (float32) of ``vocabulary``'s prompts and the settings'
    added `other` names, as a labeling worker computes them (:class:`~san.predictor.Predictor` on the CPU, with the
    source run's worker ``threads``): the model's text tower, once."""
    import torch  # here: only this step of the job needs the model

    from san.predictor import Predictor

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one_pass = dataclasses.replace(settings, dtype="fp32", tta=None)
        predictor = Predictor(model.load(), vocabulary.prompts, vocabulary.prompt_to_class, "cpu", one_pass)
        return predictor.classifier.clone().numpy()
    finally:
        torch.set_num_threads(previous)


def _copy_errors(source: SourceRun, output: RunOutput, generation: int) -> None:
    """The source run's error rows (inputs it could not label, so without regions) as this job's: a fresh labeling
    run would fail on them too. Written under one name per set of paths, so a resumed job replaces its file."""
    errors = source.errors()
    if errors.num_rows:
        errors = errors.append_column("generation", pa.array([generation] * errors.num_rows, pa.int64()))
        output.write_tables(PREDICTION_SCHEMA.empty_table(), errors.cast(ERROR_SCHEMA))


def _build_dataset(
    options: RelabelOptions,
    source: SourceRun,
    done: ray.ObjectRef,
    tally: ray.actor.ActorHandle,
    vocabulary: Vocabulary,
    stage: RelabelStage,
    generation: int,
) -> ray.data.Dataset:
    """Row groups of the source's regions files -> the images not relabeled yet -> label maps (CPU tasks) -> encode
    -> write (the labeling job's stages): one small record per file written."""
    cpu = {"num_cpus": 1}
    items = row_groups(source.regions_files())
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_ITEM_BLOCKS)))
    dataset = dataset.map_batches(ListRegions(str(source.output.predictions_dir), done, tally), **cpu)
    if options.limit is not None:
        dataset = dataset.limit(options.limit)
    dataset = dataset.map_batches(stage, batch_size=None, **cpu)
    dataset = dataset.map_batches(EncodeStage(vocabulary.to_json()), batch_size=None, **cpu)
    return dataset.map_batches(
        WriteStage(str(Path(options.output).resolve()), generation),
        batch_size=options.shard_size,
        batch_format="pyarrow",
        **cpu,
    )
