"""The labeling job: vocabulary and images in, Parquet and COCO pseudo-labels out, on Ray Data.

Stages, each on the resource it uses: list inputs (Parquet/WebDataset containers expanded in Ray tasks)
-> drop the images already labeled (``resume``) -> model batches of one padded size (``batching``, from
image headers) -> decode, validate and resize (CPU tasks) -> the model (actor pool, GPU when present:
label maps and per-class scores out) -> PNG and RLE encoding (CPU tasks) -> Parquet files written by the
tasks, each whole or absent (``write``). The driver only steers: it receives one small record per file
written (progress, counts) and at the end merges ``coco.json``, ``errors.parquet`` and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from san.errors import OptionError
from san.modeling.text_classifier import TEMPLATE_SETS, get_templates, prompt_length_problem
from san.other_names import OTHER_CHOICES, added_names, read_other_names
from san.precision import DTYPES, cpu_bf16_warning
from san.transforms import ResizeShortestEdge
from san.tta import DEFAULT_TTA_SIZES, TTA_MAX_SIZE, TestTimeAugmentation

from ..output_lock import exclusive_output
from ..outputs import MAX_REPORTED_DUPLICATES, RunOutput
from ..stopping import StopRequested, stop_on_sigterm
from ..vocabulary import Vocabulary, load_vocabulary
from .attempts import start_ledger
from .batching import WINDOW_BATCHES, GroupStage, one_batch_per_block
from .decode import EXPANDED_ROWS, DecodeStage, expand_containers
from .encode import EncodeStage
from .images import DEFAULT_MAX_PIXELS
from .inputs import ResolvedInputs, resolve_inputs
from .predict import NULL_MODEL, SMOKE_MODEL, ModelSpec, PredictStage
from .resources import ResourcePlan, init_ray, plan_resources
from .resume import SkipLabeled, start_tally
from .smoke import write_smoke_images
from .write import WriteStage

# Upper bound on the containers' blocks (each costs some scheduling overhead).
MAX_INPUT_BLOCKS = 10_000
# manifest.json's status of a run stopped on purpose (any other exception: "failed").
_STOPPED_STATUS = {KeyboardInterrupt: "interrupted", StopRequested: "stopped"}


def _workers(text: str) -> tuple[int, int]:
    """``--workers N`` or ``MIN-MAX`` as ``(min, max)``."""
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None


def _sizes(text: str) -> tuple[int, ...]:
    """``--tta-sizes 480,640,800`` as ``(480, 640, 800)``."""
    try:
        return tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected short sides separated by commas, got {text!r}") from None


@dataclass(kw_only=True)
class LabelOptions:
    """Everything ``jobs/label.py`` accepts: its parser is generated from these fields (``help`` metadata)."""

    vocab: str = field(
        metadata={
            "help": "UTF-8 file, one class per line; '#' comments; synonyms as 'name: syn, syn'; a class's own "
            "minimum score at the end of its line, 'name: syn @ 0.4' (else `min_score`); a name whose prompt is "
            "longer than CLIP's 77 tokens is refused (it would be cut)"
        }
    )
    input: str | None = field(
        default=None,
        metadata={
            "help": "a directory (recursive), a glob, a text file of paths, a Parquet file/folder with a path or "
            "image-bytes column, or WebDataset .tar shards; local or any pyarrow filesystem URI (s3://, gs://). "
            "Optional with --smoke-test (then a few generated images)"
        },
    )
    output: str = field(
        metadata={"help": "output directory (Parquet shards, coco.json, errors, manifest)"},
    )
    model: str = field(
        default="san_vit_b_16",
        metadata={
            "help": "a released preset (san_vit_b_16, san_vit_l_14; cached download from Hugging Face, or "
            "$SAN_WEIGHTS), this project's .safetensors checkpoint, an official .pth checkpoint with --config, "
            "random:<preset> (random weights, for benchmarks), or null (no model: a fixed label map, to measure "
            "the pipeline alone)"
        },
    )
    config: str | None = field(
        default=None,
        metadata={"help": "config of an official .pth checkpoint: a preset name or the official YAML/JSON"},
    )
    batch_size: int = field(
        default=4,
        metadata={"help": "images per model call in each worker (images are grouped by padded size to fill them)"},
    )
    workers: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "predictor actor pool size, N or MIN-MAX (default: 1 to as many as the cluster fits)",
            "type": _workers,
        },
    )
    gpus_per_worker: float | None = field(
        default=None,
        metadata={"help": "GPUs per predictor actor, fractions allowed (default: 1 when the cluster has GPUs, else 0)"},
    )
    short_side: int = field(default=640, metadata={"help": "resize the short side to this"})
    max_size: int = field(default=2560, metadata={"help": "cap on the resized long side"})
    templates: str | None = field(
        default=None,
        metadata={"help": "prompt templates (default: the model's, vild)", "choices": sorted(TEMPLATE_SETS)},
    )
    dtype: str = field(
        default="fp32",
        metadata={
            "help": "fp32; bf16 (GPU autocast, or a bf16 model on CPUs with AMX/AVX512-BF16 units); fp16 (GPU)",
            "choices": sorted(DTYPES),
        },
    )
    min_score: float = field(
        default=0.0,
        metadata={
            "help": "pixels whose best class score is below this become 255 (unlabeled) and join no segment "
            "(default: 0, label everything)"
        },
    )
    other: str | None = field(
        default=None,
        metadata={
            "help": "distractor names added to the vocabulary (as the official SAN demo does); pixels they win "
            "become 255 (unlabeled): coco-stuff (COCO-Stuff's 91 background names: sky-other, grass, wall-brick, "
            "...), coco-all (its 171 names, objects too), none (every pixel gets one of your classes; use it to "
            "reproduce the paper's numbers), or a UTF-8 file of names, one per line. A name equal to one of your "
            "classes or synonyms (ignoring case) is not added (default: coco-stuff; none with `smoke_test`, whose "
            "random model would leave every pixel to a distractor)"
        },
    )
    tta: bool = field(
        default=False,
        metadata={
            "help": "test-time augmentation as SAN's official evaluation: average the scores of the model input "
            "resized to each of `tta_sizes` and of each flipped horizontally (12 passes at the default sizes)"
        },
    )
    tta_sizes: tuple[int, ...] = field(
        default=DEFAULT_TTA_SIZES,
        metadata={
            "help": "short sides of the `tta` passes, e.g. 480,640,800 (long side at most "
            f"{TTA_MAX_SIZE}; default: {','.join(map(str, DEFAULT_TTA_SIZES))})",
            "type": _sizes,
        },
    )
    limit: int | None = field(default=None, metadata={"help": "label at most this many new images"})
    shard_size: int = field(
        default=256,
        metadata={
            "help": "rows per Parquet file; the workers write a file once this many images are done (or at the "
            "end), and progress and resume advance file by file"
        },
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "help": "largest image accepted (width * height); a larger one becomes an error row before it is "
            "decoded (at most PIL's own limit)"
        },
    )
    bytes_column: str | None = field(
        default=None, metadata={"help": "Parquet column with the encoded image bytes (default: auto-detect)"}
    )
    smoke_test: bool = field(
        default=False,
        metadata={"help": "a tiny random model on CPU (labels are meaningless): see the whole flow in a minute"},
    )
    progress: bool = field(default=True, metadata={"help": "do not show the progress bar"})
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        """Raise :class:`OptionError` naming the option when a value cannot work (before anything starts)."""
        for name in ("batch_size", "shard_size", "short_side", "max_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise OptionError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and not 1 <= self.workers[0] <= self.workers[1]:
            low, high = self.workers
            raise OptionError(f"`workers` must be N or MIN-MAX with 1 <= MIN <= MAX, got {low}-{high}")
        if self.max_size < self.short_side:
            raise OptionError(f"`max_size` ({self.max_size}) must not be smaller than `short_side` ({self.short_side})")
        if self.max_pixels > DEFAULT_MAX_PIXELS:
            raise OptionError(f"`max_pixels` must be at most {DEFAULT_MAX_PIXELS} (PIL's limit), got {self.max_pixels}")
        if self.limit is not None and self.limit < 0:
            raise OptionError(f"`limit` must be 0 or more, got {self.limit}")
        if self.dtype not in DTYPES:
            raise OptionError(f"`dtype` must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.input is None and not self.smoke_test:
            raise OptionError("`input` is required (a folder, glob, list file, Parquet or WebDataset shards)")
        if not self.tta_sizes or not all(1 <= size <= TTA_MAX_SIZE for size in self.tta_sizes):
            raise OptionError(f"`tta_sizes` must be short sides from 1 to {TTA_MAX_SIZE}, got {self.tta_sizes}")
        if len(set(self.tta_sizes)) != len(self.tta_sizes):
            raise OptionError(f"`tta_sizes` names a size twice: {self.tta_sizes}")
        if self.other is None:
            self.other = "none" if self.smoke_test else "coco-stuff"
        if self.other not in OTHER_CHOICES and not Path(self.other).is_file():
            choices = ", ".join(OTHER_CHOICES)
            raise OptionError(f"`other` {self.other!r} is neither one of {choices} nor a file of names")

    @property
    def test_time_augmentation(self) -> TestTimeAugmentation | None:
        """The passes of ``--tta`` (``None`` without it)."""
        return TestTimeAugmentation(tuple(self.tta_sizes)) if self.tta else None


def _versions() -> dict[str, str]:
    names = ("san-labeler", "torch", "open_clip_torch", "timm", "ray", "pyarrow", "pycocotools")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _identity(options: LabelOptions, vocabulary: Vocabulary, other: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (``RunOutput.check_compatible``)."""
    model = SMOKE_MODEL if options.smoke_test else options.model
    return {
        "vocabulary": vocabulary.fingerprint,
        "model": model,
        "config": options.config,
        "templates": options.templates,
        "short_side": options.short_side,
        "min_score": options.min_score,
        "class_min_scores": list(vocabulary.min_scores),
        "other": options.other,
        "other_names": hashlib.sha256(json.dumps(other).encode("utf-8")).hexdigest(),
        "tta": list(options.tta_sizes) if options.tta else None,
    }


def _other_names(options: LabelOptions, vocabulary: Vocabulary, check_term: Callable[[str], str | None]) -> list[str]:
    """The ``--other`` names the model adds to ``vocabulary`` (those equal to one of its terms left out);
    a name in a file whose prompt CLIP would cut is refused like a vocabulary name."""
    return added_names(read_other_names(str(options.other), check_term), vocabulary.prompts)


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
    # The SAN configs' template set unless --templates names one (a model config naming another set fails
    # in the workers on a name too long for it, as the text classifier refuses to cut a prompt).
    templates = get_templates(options.templates or "vild")

    def check_term(term: str) -> str | None:
        return prompt_length_problem(term, templates)

    vocabulary = load_vocabulary(options.vocab, check_term=check_term)
    other = _other_names(options, vocabulary, check_term)
    output = RunOutput(options.output)
    created = output.create()
    try:
        with exclusive_output(output.root):
            return _label(options, output, vocabulary, other, model)
    finally:
        if created:
            output.remove_if_empty()


def _label(
    options: LabelOptions, output: RunOutput, vocabulary: Vocabulary, other: list[str], model: ModelSpec
) -> dict[str, Any]:
    """:func:`run_label_job` in an output folder that this job holds; ``other``: the added distractor names;
    ``model``: checked and resolved (:meth:`ModelSpec.resolved`)."""
    started = time.time()
    identity = _identity(options, vocabulary, other)
    output.check_compatible(identity)
    output.remove_partial_files()
    if options.smoke_test and options.input is None:
        options.input = str(write_smoke_images(Path(options.output) / "smoke-inputs"))
    resolved = resolve_inputs(options.input, exclude=options.output, bytes_column=options.bytes_column)

    init_ray()
    plan = plan_resources(
        options.workers, options.gpus_per_worker, smoke_test=options.smoke_test, null_model=model.model == NULL_MODEL
    )
    if options.dtype == "fp16" and plan.device != "cuda":
        raise OptionError(
            "`dtype` fp16 needs GPU workers, and this run's workers use the CPU "
            "(give `gpus_per_worker` on a cluster with GPUs, or use fp32, or bf16 on CPUs with bf16 units)"
        )
    if options.dtype == "bf16" and plan.device == "cpu" and cpu_bf16_warning():
        print(f"warning: --{cpu_bf16_warning()}", file=sys.stderr)
    manifest: dict[str, Any] = {
        "status": "running",
        "command": options.command,
        "identity": identity,
        "options": {k: v for k, v in asdict(options).items() if k != "command"},
        "vocabulary": vocabulary.to_json(),
        "other_names": other,
        "resources": asdict(plan),
        "versions": _versions(),
    }
    output.write_manifest(manifest)
    tally = start_tally()
    try:
        with stop_on_sigterm():
            if options.limit == 0:
                new = {"labeled": 0, "failed": 0, "rate": 0.0, "steady_rate": 0.0, "first_result_seconds": None}
                new["images_per_model_call"] = None
            else:
                done = ray.put(output.labeled_ids())
                dataset = _build_dataset(options, model, resolved, done, tally, vocabulary, other, plan)
                new = _consume(dataset, tally, options)
    except BaseException as error:  # Ctrl-C and SIGTERM included: the manifest says the run stopped, and why
        manifest["status"] = _STOPPED_STATUS.get(type(error), "failed")
        manifest["error"] = f"{type(error).__name__}: {error}"
        output.write_manifest(manifest)
        raise
    listed, skipped = ray.get(tally.counts.remote())
    manifest["status"] = "complete"
    manifest["counts"] = {
        "listed": listed,
        "skipped": skipped,
        "new_labeled": new["labeled"],
        "new_failed": new["failed"],
    }
    manifest["timings"] = {
        "seconds": round(time.time() - started, 3),
        "images_per_second": new["rate"],
        "images_per_second_after_first_result": new["steady_rate"],
        "first_result_seconds": new["first_result_seconds"],
        "images_per_model_call": new["images_per_model_call"],
    }
    final = output.finalize(vocabulary, manifest)
    manifest = json.loads((output.root / "manifest.json").read_text(encoding="utf-8"))
    if final["duplicates"]:
        print(
            f"warning: {final['duplicates']} input rows repeat the image_path of an image already labeled and "
            f"were labeled once (e.g. {manifest['duplicate_paths'][0]!r}; up to {MAX_REPORTED_DUPLICATES} are "
            "listed in manifest.json); give every image a unique path",
            file=sys.stderr,
        )
    return manifest


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
    other: list[str],
    plan: ResourcePlan,
) -> ray.data.Dataset:
    """Inputs -> skip the labeled ones -> model batches of one padded size -> decode (CPU tasks) -> model
    (actor pool: arrays out) -> encode (CPU tasks) -> write (CPU tasks): one small record per file written."""
    cpu = {"num_cpus": plan.decode_cpus}
    dataset = _listing(options, resolved, plan.decode_cpus).map_batches(
        SkipLabeled(done, tally), batch_format="numpy", **cpu
    )
    if options.limit is not None:
        dataset = dataset.limit(options.limit)
    resize = ResizeShortestEdge(options.short_side, options.max_size)  # the one rule every stage uses
    window = options.batch_size * WINDOW_BATCHES
    dataset = dataset.map_batches(GroupStage(resize, options.batch_size), batch_size=window, **cpu)
    dataset = one_batch_per_block(dataset, cpu)
    dataset = dataset.map_batches(DecodeStage(resize, options.max_pixels), batch_size=1, **cpu)
    dataset = dataset.map_batches(
        PredictStage,
        fn_constructor_kwargs={
            "model": model,
            "vocabulary": vocabulary.to_json(),
            "device": plan.device,
            "dtype": options.dtype,
            "min_score": options.min_score,
            "other": other,
            "tta": options.test_time_augmentation,
            "threads": plan.threads_per_worker,
            "templates": options.templates,
            "resize": resize,
            "batch_size": options.batch_size,
            "attempts": start_ledger(),
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=plan.workers[0], max_size=plan.workers[1]),
        num_cpus=plan.cpus_per_worker,
        num_gpus=plan.gpus_per_worker,
        # Dead actors are replaced and their batches retried by Ray Data's defaults (max_restarts=-1,
        # max_task_retries=-1); the keywords to bound them are deprecated in Ray 2.60, so the attempt
        # ledger bounds the retries of an image that kills its worker (pipeline.label.attempts).
    )
    dataset = dataset.map_batches(EncodeStage(vocabulary.to_json()), batch_size=None, **cpu)
    return dataset.map_batches(
        WriteStage(str(Path(options.output).resolve())), batch_size=options.shard_size, batch_format="pyarrow", **cpu
    )


def _consume(dataset: ray.data.Dataset, tally: ray.actor.ActorHandle, options: LabelOptions) -> dict[str, Any]:
    """Pull the writers' small records (never label bytes) and show progress with counts and an ETA (the
    total is what has been listed and not skipped so far, capped by ``--limit``)."""
    labeled = failed = 0
    calls = 0.0
    started = time.time()
    first: tuple[float, int] | None = None  # (time, rows) of the first record: the pool is up from then on
    bar = tqdm(total=options.limit, unit="img", desc="labeling", disable=not options.progress, dynamic_ncols=True)
    try:
        for record in dataset.iter_rows():
            labeled, failed, calls = (
                labeled + record["labeled"],
                failed + record["failed"],
                calls + record["model_calls"],
            )
            if options.progress:
                listed, skipped = ray.get(tally.counts.remote())
                bar.total = min(listed - skipped, options.limit or listed)
                bar.update(record["labeled"] + record["failed"])
                bar.set_postfix(labeled=labeled, failed=failed)
            first = first or (time.time(), labeled + failed)
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
