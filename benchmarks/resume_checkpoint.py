"""Resume: the labeling job's own mechanism against Ray Data's ``CheckpointConfig`` on the same stages.

Both label ``--images`` JPEGs with ``--model null`` in two runs: the first labels the first half, the
second is given every image and must label only the rest. The job's way: ``run_label_job`` with
``--limit``, then without (resume filter in ``pipeline.label.resume``). Ray's way: the same stages between
``ray.data.read_parquet`` of the paths and ``write_parquet``, with ``DataContext.checkpoint_config`` set
(Ray's plan accepts a checkpoint only between a Read and a Write). Printed: seconds of each run and the
rows each second run wrote.

    python benchmarks/resume_checkpoint.py --images 2000 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from _report import emit
from null_pipeline import write_jpegs
from ray.data.checkpoint import CheckpointConfig

from pipeline.label.attempts import AttemptLedger
from pipeline.label.batching import WINDOW_BATCHES, GroupStage
from pipeline.label.decode import DecodeStage
from pipeline.label.encode import EncodeStage
from pipeline.label.inputs import image_id
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.label.model_stage import NULL_MODEL, ModelSpec, ModelStage
from pipeline.label.resources import start_on_driver_node
from pipeline.output_shards import PREDICTION_SCHEMA
from pipeline.vocabulary import load_vocabulary
from san.transforms import SAN_EVAL_RESIZE

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "samples" / "vocab.txt"
BATCH = 16


def ours(images: Path, output: Path, half: int) -> list[tuple[float, int]]:
    runs = []
    for limit in (half, None):
        options = LabelOptions(
            vocab=str(VOCAB), input=str(images), output=str(output), model=NULL_MODEL, batch_size=BATCH, limit=limit
        )
        options.progress = False
        started = time.perf_counter()
        manifest = run_label_job(options)
        runs.append((time.perf_counter() - started, manifest["counts"]["new_labeled"]))
    return runs


def with_ray_checkpoint(images: Path, folder: Path, half: int) -> list[tuple[float, int]]:
    paths = sorted(str(p) for p in images.iterdir())
    table = pa.table({"image_path": paths, "image_id": [image_id(p) for p in paths]})
    pq.write_table(table.slice(0, half), folder / "first.parquet")
    pq.write_table(table, folder / "all.parquet")
    vocabulary = load_vocabulary(VOCAB).to_json()
    context = ray.data.DataContext.get_current()
    context.checkpoint_config = CheckpointConfig(
        id_column="image_id", checkpoint_path=str(folder / "checkpoint"), delete_checkpoint_on_success=False
    )
    runs = []
    try:
        for source in ("first.parquet", "all.parquet"):
            started = time.perf_counter()
            # The stages and resources of the job's own plan (pipeline.label.resources on 2 CPUs, null model):
            # with Ray's default of a whole CPU each, the checkpoint's filter actor leaves none for the encoding.
            cpu = {"num_cpus": 0.2}
            rows = ray.data.read_parquet(str(folder / source)).map_batches(_as_input_rows, **cpu)
            rows = rows.map_batches(GroupStage(SAN_EVAL_RESIZE, BATCH), batch_size=BATCH * WINDOW_BATCHES, **cpu)
            rows = rows.map_batches(DecodeStage(SAN_EVAL_RESIZE, 10**8), batch_size=1, **cpu)
            rows = rows.map_batches(
                ModelStage,
                fn_constructor_kwargs={
                    "model": ModelSpec(NULL_MODEL),
                    "vocabulary": vocabulary,
                    "device": "cpu",
                    "dtype": "fp32",
                    "min_score": 0.0,
                    "threads": 1,
                    "templates": None,
                    "resize": SAN_EVAL_RESIZE,
                    "batch_size": BATCH,
                    "attempts": start_on_driver_node(AttemptLedger),
                    "other": [],
                    "tta": None,
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=0.25,
            )
            rows = rows.map_batches(EncodeStage(vocabulary), batch_size=None, **cpu).map_batches(
                lambda t: t.select(PREDICTION_SCHEMA.names), batch_format="pyarrow", **cpu
            )
            before = _rows(folder / "out")
            rows.write_parquet(str(folder / "out"))
            runs.append((time.perf_counter() - started, _rows(folder / "out") - before))
    finally:
        context.checkpoint_config = None
    return runs


def _rows(folder: Path) -> int:
    return pq.read_table(folder, columns=["image_path"]).num_rows if folder.exists() else 0


def _as_input_rows(batch: dict) -> dict:
    """The job's input rows (``image_path``, ``data``, ``error``, ``fingerprint``), keeping the checkpoint's id
    column."""
    count = len(batch["image_path"])
    return {**batch, "data": [b""] * count, "error": [""] * count, "fingerprint": [""] * count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument(
        "--cpus", type=int, default=os.cpu_count(), help="logical CPUs of the local Ray (default: this machine's)"
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    half = args.images // 2
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp) / "images", args.images, [(640, 480)])
        ray.init(address="local", num_cpus=args.cpus, logging_level="ERROR")
        try:
            rows = {"this job's resume": ours(images, Path(tmp) / "ours", half)}
            (Path(tmp) / "ray").mkdir()
            rows["Ray CheckpointConfig"] = with_ray_checkpoint(images, Path(tmp) / "ray", half)
        finally:
            ray.shutdown()
    table = [
        f"### Resume: this job's filter vs Ray's CheckpointConfig ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"{args.images} JPEGs 640x480, `--model null`, batch {BATCH}; first run: {half} images, second run: all "
        f"(must label the other {args.images - half}); local Ray of {args.cpus} logical CPUs. "
        f"Load average {os.getloadavg()[0]:.2f}. Command: `{command}`",
        "",
        "| mechanism | first run, s | second run, s | images the second run labeled |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {a[0]:.1f} | {b[0]:.1f} | {b[1]} |" for name, (a, b) in rows.items()],
        "",
    ]
    emit(table, args.write)


if __name__ == "__main__":
    main()
