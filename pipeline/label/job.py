"""The labeling job: vocabulary and images in, Parquet and COCO pseudo-labels out, on Ray Data.

Stages: list inputs on the driver (paths only; Parquet/WebDataset containers are expanded lazily in
Ray tasks) -> decode, validate and resize in CPU tasks -> predict and encode in an actor pool (one
model and one set of text embeddings per actor) -> the driver writes Parquet shards atomically as
batches arrive -> at the end, merge into ``coco.json``, ``errors.parquet`` and ``manifest.json``.
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

import numpy as np
import ray
from tqdm import tqdm

from san.errors import OptionError
from san.modeling.text_classifier import TEMPLATE_SETS, get_templates, prompt_length_problem
from san.other_names import OTHER_CHOICES, added_names, read_other_names
from san.precision import DTYPES, cpu_bf16_warning
from san.transforms import ResizeShortestEdge
from san.tta import DEFAULT_TTA_SIZES, TTA_MAX_SIZE, TestTimeAugmentation

from ..output_lock import exclusive_output
from ..outputs import RunOutput
from ..stopping import StopRequested, stop_on_sigterm
from ..vocabulary import Vocabulary, load_vocabulary
from .attempts import start_ledger
from .decode import DecodeStage, expand_containers
from .images import DEFAULT_MAX_PIXELS
from .inputs import Container, InputItem, image_id, resolve_inputs
from .predict import SMOKE_MODEL, ModelSpec, PredictStage
from .resources import ResourcePlan, init_ray, plan_resources
from .smoke import write_smoke_images

# Upper bound on the listed inputs' blocks (each costs some scheduling overhead).
MAX_INPUT_BLOCKS = 10_000
# Duplicate image paths listed in manifest.json (all are counted).
MAX_REPORTED_DUPLICATES = 100
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
            "$SAN_WEIGHTS), this project's .safetensors checkpoint, an official .pth checkpoint with --config, or "
            "random:<preset> (random weights, for benchmarks)"
        },
    )
    config: str | None = field(
        default=None,
        metadata={"help": "config of an official .pth checkpoint: a preset name or the official YAML/JSON"},
    )
    batch_size: int = field(default=4, metadata={"help": "images per model call in each worker"})
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
    shard_size: int = field(default=256, metadata={"help": "rows per Parquet file written"})
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
            return _label(options, output, vocabulary, other)
    finally:
        if created:
            output.remove_if_empty()


def _label(options: LabelOptions, output: RunOutput, vocabulary: Vocabulary, other: list[str]) -> dict[str, Any]:
    """:func:`run_label_job` in an output folder that this job holds; ``other``: the added distractor names."""
    started = time.time()
    identity = _identity(options, vocabulary, other)
    output.check_compatible(identity)
    output.remove_partial_files()
    if options.smoke_test and options.input is None:
        options.input = str(write_smoke_images(Path(options.output) / "smoke-inputs"))
    done = output.labeled_paths()
    resolved = resolve_inputs(options.input, exclude=options.output, bytes_column=options.bytes_column)
    todo = [item for item in resolved.items if item.image_path not in done]
    skipped = len(resolved.items) - len(todo)
    if options.limit is not None:
        todo = todo[: options.limit]

    model = ModelSpec(SMOKE_MODEL if options.smoke_test else options.model, options.config).resolved()
    init_ray()
    plan = plan_resources(options.workers, options.gpus_per_worker, smoke_test=options.smoke_test)
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
    try:
        with stop_on_sigterm():
            if todo or resolved.containers:
                dataset = _build_dataset(options, model, todo, resolved.containers, done, vocabulary, other, plan)
                new = _consume(dataset, output, options, total=len(todo) if not resolved.containers else None)
            else:
                new = {
                    "labeled": 0,
                    "failed": 0,
                    "duplicates": [],
                    "rate": 0.0,
                    "steady_rate": 0.0,
                    "first_result_seconds": None,
                }
    except BaseException as error:  # Ctrl-C and SIGTERM included: the manifest says the run stopped, and why
        manifest["status"] = _STOPPED_STATUS.get(type(error), "failed")
        manifest["error"] = f"{type(error).__name__}: {error}"
        output.write_manifest(manifest)
        raise
    manifest["status"] = "complete"
    manifest["counts"] = {
        "listed": len(resolved.items),
        "skipped": skipped,
        "new_labeled": new["labeled"],
        "new_failed": new["failed"],
        "duplicates": len(new["duplicates"]),
    }
    manifest["timings"] = {
        "seconds": round(time.time() - started, 3),
        "images_per_second": new["rate"],
        "images_per_second_after_first_result": new["steady_rate"],
        "first_result_seconds": new["first_result_seconds"],
    }
    if new["duplicates"]:
        manifest["duplicate_paths"] = new["duplicates"][:MAX_REPORTED_DUPLICATES]
        print(
            f"warning: {len(new['duplicates'])} input rows repeat the image_path of an image already labeled in "
            f"this run and were not labeled again (e.g. {new['duplicates'][0]!r}; up to "
            f"{MAX_REPORTED_DUPLICATES} are listed in manifest.json); give every image a unique path",
            file=sys.stderr,
        )
    final = output.finalize(vocabulary, manifest)
    manifest["counts"].update(final)
    return manifest


def _build_dataset(
    options: LabelOptions,
    model: ModelSpec,
    todo: list[InputItem],
    containers: list[Container],
    done: set[str],
    vocabulary: Vocabulary,
    other: list[str],
    plan: ResourcePlan,
) -> ray.data.Dataset:
    """Listed paths and lazily expanded containers -> decode (CPU tasks) -> predict (actor pool)."""
    parts = []
    if todo:
        rows = [{"image_path": i.image_path, "data": b"", "error": i.error or ""} for i in todo]
        # Results reach the driver one task output (= one input block) at a time, so blocks of one model
        # batch keep shards, progress and resume fine-grained (measured: 10-row blocks held all results
        # of a 20-image run until its end).
        blocks = min(-(-len(rows) // options.batch_size), MAX_INPUT_BLOCKS)
        parts.append(ray.data.from_items(rows, override_num_blocks=blocks))
    if containers:
        sources = ray.data.from_items([{"kind": c.kind, "uri": c.uri} for c in containers])
        expanded = sources.flat_map(
            expand_containers, fn_kwargs={"bytes_column": options.bytes_column, "done": frozenset(done)}
        )
        parts.append(expanded.limit(options.limit) if options.limit is not None else expanded)
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    resize = ResizeShortestEdge(options.short_side, options.max_size)  # the one rule both stages use
    dataset = dataset.map_batches(
        DecodeStage(resize, options.max_pixels),
        batch_size=options.batch_size,
        num_cpus=plan.decode_cpus,
    )
    return dataset.map_batches(
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
            "attempts": start_ledger(),
        },
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=plan.workers[0], max_size=plan.workers[1]),
        num_cpus=plan.cpus_per_worker,
        num_gpus=plan.gpus_per_worker,
        # Dead actors are replaced and their batches retried by Ray Data's defaults (max_restarts=-1,
        # max_task_retries=-1); the keywords to bound them are deprecated in Ray 2.60, so the attempt
        # ledger bounds the retries of an image that kills its worker (pipeline.label.attempts).
    )


def _consume(dataset: ray.data.Dataset, output: RunOutput, options: LabelOptions, total: int | None) -> dict[str, Any]:
    """Pull finished rows to the driver and write them as shards; show progress with counts and ETA.

    The rows held back for the next shard are written also when the loop stops early (Ctrl-C, a
    crash). A second prediction for an ``image_path`` labeled earlier in the run is not kept (two input
    rows that share a path, e.g. in two Parquet files); those paths are returned as ``duplicates``.
    """
    predictions: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    labeled_now: set[str] = set()
    duplicates: list[str] = []
    failed = 0
    started = time.time()
    first: tuple[float, int] | None = None  # (time, rows) of the first batch: the pool is up from then on
    bar = tqdm(total=total, unit="img", desc="labeling", disable=not options.progress, dynamic_ncols=True)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for i, path in enumerate(batch["image_path"]):
                path = str(path)
                if batch["error"][i]:
                    errors.append({"image_path": path, "error": str(batch["error"][i])})
                    failed += 1
                elif path in labeled_now:
                    duplicates.append(path)
                else:
                    predictions.append(_prediction_row(batch, i))
                    labeled_now.add(path)
            bar.update(len(batch["image_path"]))
            bar.set_postfix(labeled=len(labeled_now), failed=failed)
            first = first or (time.time(), len(labeled_now) + failed)
            if len(predictions) + len(errors) >= options.shard_size:
                output.write_shard(predictions, errors)
                predictions, errors = [], []
    finally:
        output.write_shard(predictions, errors)
        bar.close()
    finished = time.time()
    rows = len(labeled_now) + failed
    steady = (rows - first[1]) / max(finished - first[0], 1e-9) if first else 0.0
    return {
        "labeled": len(labeled_now),
        "failed": failed,
        "duplicates": duplicates,
        "rate": round(rows / max(finished - started, 1e-9), 3),
        "steady_rate": round(steady, 3),
        "first_result_seconds": round(first[0] - started, 3) if first else None,
    }


def _prediction_row(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    path = str(batch["image_path"][i])
    return {
        "image_path": path,
        "image_id": image_id(path),
        "width": int(batch["width"][i]),
        "height": int(batch["height"][i]),
        "label_map_png": bytes(batch["label_map_png"][i]),
        "segments": json.loads(batch["segments_json"][i]),
    }
