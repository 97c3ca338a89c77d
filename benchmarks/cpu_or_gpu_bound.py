"""Which of a GPU node's two rates bounds its labeling: the pipeline alone on its CPUs (``null_pipeline.py --json``)
or the model alone on its GPU (``inference.py --json``). Run by ``benchmarks/gpu_checks.sh``:

    python benchmarks/cpu_or_gpu_bound.py NULL_PIPELINE.json INFERENCE.json [--dtype bfloat16] [--batch 8]

Prints both images/s (the pipeline's after its first result, at its largest batch and CPU count; the GPU's at the
given dtype and batch, on its slowest image size) and the lower of the two, which the node cannot label faster than.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def bound(pipeline: dict, inference: list[dict], dtype: str, batch: int) -> list[str]:
    """The lines that name both rates and the one that bounds the node."""
    run = max(pipeline["runs"], key=lambda r: (r["cpus"], r["batch"]))
    gpu_rows = [r for r in inference if r["device"] == "cuda" and r["dtype"] == dtype and r["batch"] == batch]
    if not gpu_rows:
        raise SystemExit(f"{dtype} at batch {batch} on cuda is not among the inference rows")
    gpu = min(gpu_rows, key=lambda r: r["images_per_second"])
    gpu_rate = gpu["images_per_second"]
    if run["steady_images_per_second"] > 0:
        cpu_rate, how = run["steady_images_per_second"], f"after the first result ({run['images_per_second']:.1f} "
        how += "img/s whole job"
    else:  # a run of one output file has no rate after its first result
        cpu_rate, how = run["images_per_second"], "whole job, start-up included (one output file: raise NULL_IMAGES"
    which = "its CPUs (the pipeline)" if cpu_rate < gpu_rate else "its GPU (the model)"
    return [
        f"pipeline alone (--model null) on {run['cpus']} CPUs, batch {run['batch']}: {cpu_rate:.1f} img/s "
        f"{how}; load average {run['load']:.2f})",
        f"model alone on the GPU ({dtype}, batch {batch}, {gpu['image']}): {gpu_rate:.1f} img/s",
        f"this node labels at most {min(cpu_rate, gpu_rate):.1f} img/s: bound by {which}, "
        f"{max(cpu_rate, gpu_rate) / max(min(cpu_rate, gpu_rate), 1e-9):.2f}x below the other",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", type=Path, help="null_pipeline.py --json output")
    parser.add_argument("inference", type=Path, help="inference.py --json output")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    pipeline = json.loads(args.pipeline.read_text())
    print("\n".join(bound(pipeline, json.loads(args.inference.read_text()), args.dtype, args.batch)))


if __name__ == "__main__":
    main()
