"""The labeling job: vocabulary and images in, Parquet and COCO pseudo-labels out, on Ray Data.

Stages, each on the resource it uses: list inputs (Parquet/WebDataset containers expanded in Ray tasks)
-> drop the images already labeled (``resume``) -> model batches of one padded size (``batching``, from
image headers; each file read there once, its bytes handed on) -> decode, validate and resize (CPU tasks)
-> the model (actor pool, GPU when present: label maps and per-class scores out, and with ``keep_regions`` each
image's regions) -> PNG and RLE encoding (CPU tasks) -> Parquet files written by the tasks, each whole or absent
(``write``; Ray fuses the encoding and writing tasks into one). The driver only steers: it
receives one small record per file written (progress, counts) and at the end merges ``coco.json``,
``errors.parquet`` and ``manifest.json``. What a job does around its stages (the output folder held, prepared and
merged, the run recorded) is shared with ``jobs/relabel.py``: :func:`in_output_folder`, :func:`prepare_output`,
:func:`run_stages`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar

import ray
from tqdm import tqdm

from san.errors import OptionError
from san.modeling.prompts import get_templates, prompt_length_problem
from san.other_names import added_names, read_other_names
from san.settings import PredictionSettings

from ..disk_space import OutputFullError, is_out_of_space, out_of_space
from ..output_lock import exclusive_output
from ..output_shards import set_aside_name
from ..outputs import MAX_REPORTED_DUPLICATES, SMOKE_INPUTS, RunOutput
from ..stopping import StopRequested, stop_on_sigterm
from ..vocabulary import Vocabulary, load_vocabulary
from .actor_start import model_actors_start_within
from .attempts import AttemptLedger
from .batching import WINDOW_BATCHES, GroupStage, batches_per_block, model_batch_blocks
from .decode import EXPANDED_ROWS, DecodeStage, expand_containers
from .encode import EncodeStage
from .inputs import ResolvedInputs, absolute_spec, check_outside_runs, resolve_inputs
from .model_stage import NULL_MODEL, SMOKE_MODEL, ModelSpec, ModelStage, WorkerSetup
from .options import LabelOptions
from .resources import ACTOR_START_TIMEOUT_S, ResourcePlan, init_ray, plan_resources
from .resume import MAX_REPORTED_CHANGES, ListingTally, SkipLabeled, start_tally
from .smoke import write_smoke_inputs
from .write import WriteStage

T = TypeVar("T")
# Upper bound on the containers' blocks (each costs some scheduling overhead).
MAX_INPUT_BLOCKS = 10_000
# Images above which one coco.json is too big for pycocotools on most machines (it needs about 3 times the
# file's size in memory, and the file takes about 8 KB per image): the job then suggests --coco shards.
SINGLE_COCO_IMAGES = 250_000
# Seconds between the driver's questions to the listing tally for its progress bar's total (one actor call each).
TALLY_INTERVAL = 1.0
# manifest.json's status of a run stopped on purpose (any other exception: "failed").
_STOPPED_STATUS = {KeyboardInterrupt: "interrupted", StopRequested: "stopped"}


def versions() -> dict[str, str]:
    """The versions of Python and of the packages that decide a run's labels (its manifest's ``versions``)."""
    names = ("san-labeler", "torch", "open_clip_torch", "timm", "ray", "pyarrow", "pycocotools")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class RunBook(ListingTally, AttemptLedger):
    """A labeling run's one bookkeeping actor: its listing tally and its attempt ledger, whose calls are few and
    small, in one worker process rather than two (each worker process costs about half a second of CPU to start,
    measured on 2 CPUs, where the start-up is bound by the CPUs)."""

    def __init__(self) -> None:
        ListingTally.__init__(self)
        AttemptLedger.__init__(self)


class StageOptions(Protocol):
    """What :func:`run_stages` reads of a job's options (``LabelOptions``, ``RelabelOptions``)."""

    output: str
    limit: int | None
    progress: bool
    coco: str


def run_identity(
    vocabulary: Vocabulary,
    model: str,
    config: str | None,
    other: str | None,
    settings: PredictionSettings,
    keep_regions: str | None,
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (``RunOutput.check_compatible``): the vocabulary,
    the model (``model``, ``config``), the `other` option and the names it added, the settings' own identity, and
    whether and how regions are kept (a resumed run keeps all its images' regions, or none)."""
    return {
        "vocabulary": vocabulary.fingerprint,
        "model": model,
        "config": config,
        "other": other,
        "other_names": hashlib.sha256(json.dumps(list(settings.other)).encode("utf-8")).hexdigest(),
        **settings.identity(),
        "keep_regions": keep_regions,
    }


def _identity(options: LabelOptions, vocabulary: Vocabulary, settings: PredictionSettings) -> dict[str, Any]:
    """:func:`run_identity` of a labeling job."""
    model = SMOKE_MODEL if options.smoke_test else options.model
    return run_identity(vocabulary, model, options.config, options.other, settings, options.keep_regions)


def vocabulary_and_other(options: LabelOptions) -> tuple[Vocabulary, list[str]]:
    """The options' vocabulary and the `other` names the model adds to it (those equal to one of its terms left
    out). A name whose prompt CLIP would cut (in the `templates`) is refused, in the vocabulary as in a file of
    `other` names."""
    # The SAN configs' template set unless --templates names one (a model config naming another set fails
    # in the workers on a name too long for it, as the text classifier refuses to cut a prompt).
    templates = get_templates(options.templates or "vild")

    def check_term(term: str) -> str | None:
        return prompt_length_problem(term, templates)

    vocabulary = load_vocabulary(options.vocab, check_term=check_term)
    return vocabulary, added_names(read_other_names(str(options.other), check_term), vocabulary.prompts)


def run_label_job(options: LabelOptions) -> dict[str, Any]:
    """Label every input (resuming a previous run in the same output directory); returns the manifest.

    Images labeled by an earlier run with the same output are skipped; inputs that failed are tried
    again. Finished rows are saved also when the run stops early (Ctrl-C, SIGTERM from ``ray job stop``,
    a crash); the manifest then says ``"status": "interrupted"``, ``"stopped"`` or ``"failed"``. One job at a
    time writes to an output folder (:mod:`pipeline.output_lock`); a folder this call created is removed
    again when the run fails before writing anything into it.
    """
    # The model first: a missing or unloadable checkpoint is named before anything else is read or written.
    model = ModelSpec(SMOKE_MODEL if options.smoke_test else options.model, options.config).resolved()
    vocabulary, other = vocabulary_and_other(options)
    output = RunOutput(options.output)
    return in_output_folder(output, lambda: _label(options, output, vocabulary, other, model))


def in_output_folder(output: RunOutput, work: Callable[[], T]) -> T:
    """``work()`` while this job holds ``output`` (:mod:`pipeline.output_lock`), which is created first when missing
    and removed again when the job fails before writing anything into it; a full disk before the run's manifest
    was written is one line (after it, ``work`` says so itself)."""
    created = output.create()
    try:
        with exclusive_output(output.root):
            return work()
    except OSError as error:
        if is_out_of_space(error):
            raise out_of_space(output.root, os.strerror(error.errno)) from None
        raise
    finally:
        if created:
            output.remove_if_empty()


def prepare_output(output: RunOutput, identity: dict[str, Any]) -> tuple[int, list[Path]]:
    """Make ``output`` ready for a job of ``identity``: refuse a folder it cannot continue, remove the temporary
    files of a killed job and set aside damaged files (a warning each). Returns the job's generation and the
    files set aside."""
    output.check_compatible(identity)
    generation = output.next_generation()
    output.remove_partial_files()
    damaged = output.set_aside_damaged()
    for shard, reason in damaged.items():
        again = "inputs are tried again" if shard.parent == output.errors_dir else "images are labeled again"
        print(
            f"warning: {shard} cannot be read ({reason}); set aside as {set_aside_name(shard).name}: its {again}",
            file=sys.stderr,
        )
    return generation, list(damaged)


def _label(
    options: LabelOptions, output: RunOutput, vocabulary: Vocabulary, other: list[str], model: ModelSpec
) -> dict[str, Any]:
    """:func:`run_label_job` in an output folder that this job holds; ``other``: the added distractor names;
    ``model``: checked and resolved (:meth:`ModelSpec.resolved`)."""
    started = time.time()
    settings = options.prediction_settings(vocabulary, other)
    identity = _identity(options, vocabulary, settings)
    if options.input is not None:
        check_outside_runs(options.input, options.output)
    generation, damaged = prepare_output(output, identity)
    if options.smoke_test and options.input is None:
        options.input = str(write_smoke_inputs(output.root / SMOKE_INPUTS))
    resolved = resolve_inputs(options.input, exclude=options.output, bytes_column=options.bytes_column)

    init_ray(actor_pool=True)
    plan = plan_resources(
        options.workers, options.gpus_per_worker, smoke_test=options.smoke_test, null_model=model.model == NULL_MODEL
    )
    if options.dtype == "fp16" and plan.device != "cuda":
        raise OptionError(
            "`dtype` fp16 needs GPU workers, and this run's workers use the CPU "
            "(give `gpus_per_worker` on a cluster with GPUs, or use fp32, or bf16 on CPUs with bf16 units)"
        )
    if options.dtype == "bf16" and plan.device == "cpu":
        from san.precision import cpu_bf16_warning  # (imports torch: only for such a run, not every job's start)

        if cpu_bf16_warning():
            print(f"warning: --{cpu_bf16_warning()}", file=sys.stderr)
    manifest: dict[str, Any] = {
        "status": "running",
        "generation": generation,
        "command": options.command,
        "identity": identity,
        "options": {k: v for k, v in asdict(options).items() if k != "command"},
        "input": absolute_spec(options.input),  # what reviews and exports list again (pipeline.run_images)
        "vocabulary": vocabulary.to_json(),
        "other_names": other,
        "resources": asdict(plan),
        "versions": versions(),
    }

    def build(done: ray.ObjectRef, tally: ray.actor.ActorHandle) -> ray.data.Dataset:
        return _build_dataset(options, model, resolved, done, tally, vocabulary, settings, plan, generation)

    asks = f"{plan.cpus_per_worker:g} CPUs and {plan.gpus_per_worker:g} GPUs"

    def guard(book: ray.actor.ActorHandle) -> AbstractContextManager[None]:
        return model_actors_start_within(book, ACTOR_START_TIMEOUT_S, asks)

    return run_stages(output, manifest, damaged, vocabulary, options, build, started, book=RunBook, guard=guard)


def run_stages(
    output: RunOutput,
    manifest: dict[str, Any],
    damaged: list[Path],
    vocabulary: Vocabulary,
    options: StageOptions,
    build: Callable[[ray.ObjectRef, ray.actor.ActorHandle], ray.data.Dataset],
    started: float,
    desc: str = "labeling",
    book: type[ListingTally] = ListingTally,
    guard: Callable[[ray.actor.ActorHandle], AbstractContextManager[None]] | None = None,
) -> dict[str, Any]:
    """Write ``manifest`` (``"running"``; the files ``damaged`` set aside named), run the dataset that ``build``
    makes from the images already done (:meth:`RunOutput.labeled_ids`, a Ray object) and the run's
    :class:`~pipeline.label.resume.ListingTally`, pulling its writers' records with a progress bar (``desc``), and
    merge the output folder (:func:`_finish`); returns the final manifest. ``book``: the tally actor's class
    (:func:`~pipeline.label.resume.start_tally`); ``guard(tally)``: a context around the run (the label job's
    :func:`~pipeline.label.actor_start.model_actors_start_within`). A run that stops (Ctrl-C, SIGTERM, a
    crash, a full disk) keeps what is finished, its manifest saying why it stopped."""
    if damaged:
        manifest["set_aside"] = [str(set_aside_name(shard).relative_to(output.root)) for shard in damaged]
    output.write_manifest(manifest)
    tally = start_tally(book)
    try:
        with stop_on_sigterm(), guard(tally) if guard else nullcontext():
            if options.limit == 0:
                new = {"labeled": 0, "failed": 0, "rate": 0.0, "steady_rate": 0.0, "first_result_seconds": None}
                new["images_per_model_call"] = None
            else:
                done = ray.put(output.labeled_ids())
                new = _consume(build(done, tally), tally, options, desc)
            final = _finish(output, manifest, vocabulary, tally, new, started, options.coco)
    except BaseException as error:  # Ctrl-C and SIGTERM included: the manifest says the run stopped, and why
        if is_out_of_space(error):
            error = out_of_space(output.root, os.strerror(error.errno))
        manifest["status"] = _STOPPED_STATUS.get(type(error), "failed")
        manifest["error"] = f"{type(error).__name__}: {error}"
        recorded = output.record_end(manifest)
        if isinstance(error, OutputFullError):
            unrecorded = "" if recorded else f" ({output.root / 'manifest.json'} could not be updated either)"
            raise OutputFullError(f"{error.template}{unrecorded}") from None
        raise
    manifest = json.loads((output.root / "manifest.json").read_text(encoding="utf-8"))
    if final["duplicates"]:
        print(
            f"warning: {final['duplicates']} input rows repeat the image_path of an image already labeled and "
            f"were labeled once (e.g. {manifest['duplicate_paths'][0]!r}; up to {MAX_REPORTED_DUPLICATES} are "
            "listed in manifest.json); give every image a unique path",
            file=sys.stderr,
        )
    if options.coco == "single" and final["labeled"] > SINGLE_COCO_IMAGES:
        size = (output.root / "coco.json").stat().st_size / 2**30
        print(
            f"warning: coco.json holds {final['labeled']} images ({size:.1f} GiB), and pycocotools needs about "
            "3 times its size in memory to load it; rerun the same command with --coco shards to write one COCO "
            "file per predictions file instead (nothing is labeled again)",
            file=sys.stderr,
        )
    return manifest


def _finish(
    output: RunOutput,
    manifest: dict[str, Any],
    vocabulary: Vocabulary,
    tally: ray.actor.ActorHandle,
    new: dict[str, Any],
    started: float,
    coco: str,
) -> dict[str, int]:
    """Count the run into ``manifest`` (``"complete"``) and merge the output folder (:meth:`RunOutput.finalize`,
    its COCO as ``coco`` says)."""
    listed, skipped = ray.get(tally.counts.remote())
    changed, changed_paths = ray.get(tally.changes.remote())
    manifest["status"] = "complete"
    manifest["counts"] = {
        "listed": listed,
        "skipped": skipped,
        "changed": changed,
        "new_labeled": new["labeled"],
        "new_failed": new["failed"],
    }
    if changed:
        manifest["changed_paths"] = changed_paths
        print(
            f"warning: {changed} images changed since they were labeled (size or modification time; bytes, for "
            f"images stored in Parquet or WebDataset) and were labeled again (e.g. {changed_paths[0]!r}; up to "
            f"{MAX_REPORTED_CHANGES} are listed in manifest.json)",
            file=sys.stderr,
        )
    manifest["timings"] = {
        "seconds": round(time.time() - started, 3),
        "images_per_second": new["rate"],
        "images_per_second_after_first_result": new["steady_rate"],
        "first_result_seconds": new["first_result_seconds"],
        "images_per_model_call": new["images_per_model_call"],
    }
    return output.finalize(vocabulary, manifest, coco)


def _listing(options: LabelOptions, resolved: ResolvedInputs, cpus: float) -> ray.data.Dataset:
    """The inputs as rows ``image_path``, ``data`` (bytes, or empty: read by path), ``error``."""
    parts = []
    if resolved.items:
        rows = [{"image_path": i.image_path, "data": b"", "error": i.error or ""} for i in resolved.items]
        parts.append(ray.data.from_items(rows, override_num_blocks=-(-len(rows) // EXPANDED_ROWS)))
    if resolved.containers:
        sources = [{"kind": c.kind, "uri": c.uri, "exclude": c.exclude} for c in resolved.containers]
        blocks = min(len(sources), MAX_INPUT_BLOCKS)  # one task per container, in parallel
        expand = {"bytes_column": options.bytes_column}
        parts.append(
            ray.data.from_items(sources, override_num_blocks=blocks).map_batches(
                expand_containers, batch_size=1, fn_kwargs=expand, num_cpus=cpus
            )
        )
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _build_dataset(
    options: LabelOptions,
    model: ModelSpec,
    resolved: ResolvedInputs,
    done: ray.ObjectRef,
    tally: ray.actor.ActorHandle,
    vocabulary: Vocabulary,
    settings: PredictionSettings,
    plan: ResourcePlan,
    generation: int,
) -> ray.data.Dataset:
    """Inputs -> skip the labeled ones -> model batches of one padded size, with each file's bytes (read once) ->
    decode (CPU tasks) -> model (actor pool: arrays out) -> encode and write (CPU tasks, fused by Ray into one):
    one small record per file written."""
    cpu = {"num_cpus": plan.decode_cpus}
    dataset = _listing(options, resolved, plan.decode_cpus).map_batches(
        SkipLabeled(done, tally), batch_format="numpy", **cpu
    )
    if options.limit is not None:
        dataset = dataset.limit(options.limit)
    resize = settings.resize  # the one rule every stage uses
    window = options.batch_size * WINDOW_BATCHES
    dataset = dataset.map_batches(GroupStage(resize, options.batch_size), batch_size=window, **cpu)
    dataset = model_batch_blocks(dataset, options.batch_size, cpu)
    rows = batches_per_block(options.batch_size)  # a block's model batches, decoded and run together
    decode = ray.data.TaskPoolStrategy(size=plan.decode_tasks)
    dataset = dataset.map_batches(DecodeStage(resize, options.max_pixels), batch_size=rows, compute=decode, **cpu)
    dataset = dataset.map_batches(
        ModelStage,
        fn_constructor_kwargs={
            "model": model,
            "vocabulary": vocabulary.to_json(),
            "settings": settings,
            "worker": WorkerSetup(plan.device, plan.threads_per_worker, tally),  # a RunBook: the ledger too
            "keep_regions": options.keep_regions,
        },
        batch_size=rows,
        compute=ray.data.ActorPoolStrategy(min_size=plan.workers[0], max_size=plan.workers[1]),
        num_cpus=plan.cpus_per_worker,
        num_gpus=plan.gpus_per_worker,
        # Dead actors are replaced and their batches retried by Ray Data's defaults (max_restarts=-1,
        # max_task_retries=-1); the keywords to bound them are deprecated in Ray 2.60, so the attempt
        # ledger bounds the retries of an image that kills its worker (pipeline.label.attempts).
    )
    encode = ray.data.TaskPoolStrategy(size=plan.encode_tasks)  # the same for both: Ray fuses them
    dataset = dataset.map_batches(
        EncodeStage(vocabulary.to_json(), options.keep_regions), batch_size=None, compute=encode, **cpu
    )
    return dataset.map_batches(
        WriteStage(str(Path(options.output).resolve()), generation),
        batch_size=options.shard_size,
        batch_format="pyarrow",
        compute=encode,
        **cpu,
    )


def _consume(
    dataset: ray.data.Dataset, tally: ray.actor.ActorHandle, options: StageOptions, desc: str
) -> dict[str, Any]:
    """Pull the writers' small records (never label bytes) and show progress with counts and an ETA (the
    total is what has been listed and not skipped so far, capped by ``--limit``, asked of the tally at most
    once per :data:`TALLY_INTERVAL`)."""
    labeled = failed = 0
    calls = 0.0
    started = time.time()
    asked = float("-inf")  # when the tally was last asked (time.monotonic())
    first: tuple[float, int] | None = None  # (time, rows) of the first record: the pool is up from then on
    bar = tqdm(total=options.limit, unit="img", desc=desc, disable=not options.progress, dynamic_ncols=True)
    try:
        for record in dataset.iter_rows():
            if record["no_space"]:
                raise out_of_space(options.output, record["no_space"])
            labeled, failed, calls = (
                labeled + record["labeled"],
                failed + record["failed"],
                calls + record["model_calls"],
            )
            if options.progress:
                if time.monotonic() - asked >= TALLY_INTERVAL:
                    listed, skipped = ray.get(tally.counts.remote())
                    bar.total = min(listed - skipped, options.limit or listed)
                    asked = time.monotonic()
                bar.update(record["labeled"] + record["failed"])
                bar.set_postfix(labeled=labeled, failed=failed)
            first = first or (time.time(), labeled + failed)
        if options.progress:  # the final total
            listed, skipped = ray.get(tally.counts.remote())
            bar.total = min(listed - skipped, options.limit or listed)
    finally:
        bar.close()
    finished = time.time()
    rows = labeled + failed
    steady = (rows - first[1]) / max(finished - first[0], 1e-9) if first else 0.0
    return {
        "labeled": labeled,
        "failed": failed,
        "rate": round(rows / max(finished - started, 1e-9), 3),
        "steady_rate": round(steady, 3),
        "first_result_seconds": round(first[0] - started, 3) if first else None,
        "images_per_model_call": round(labeled / calls, 3) if calls else None,
    }
