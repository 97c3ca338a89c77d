"""Region search at scale: ``jobs/search.py``'s time over N images' kept regions, at ViT-B/16's sizes.

    python benchmarks/region_search.py --images 100000 --write BENCHMARKS.md

The regions are synthetic (no run of 100,000 photos fits this benchmark): per image 100 regions with a 512-d
float16 embedding each, drawn near the vocabulary's text directions, and a 40 x 54 mask grid (a 640 x 480 photo
at SAN's input size) that is the same for every image, so that the files hold the embeddings the search reads
without the 43 GB of masks it does not read; files of 256 images, written by the project's own shard writer.
The search runs in a fresh process (the text tower of a random ViT-B/16, or of ``--model``, then every file) and
is timed whole, with its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.label.inputs import image_id  # noqa: E402
from pipeline.output_shards import write_shard_file  # noqa: E402
from pipeline.outputs import RunOutput  # noqa: E402
from pipeline.region_shards import REGION_SCHEMA, regions_row  # noqa: E402
from san.config import PRESETS, TINY_CLIP_CFG  # noqa: E402

# The text embedding width of each preset the benchmark can search with (ViT-B/16's from open_clip's config).
EMBED_DIMS = {"san_vit_b_16": 512, "san_tiny": TINY_CLIP_CFG["embed_dim"]}
MASK = (40, 54)
PADDED, INPUT, ORIGINAL = (640, 864), (640, 853), (480, 640)
SHARD_IMAGES = 256
POOL = 1024  # distinct images' regions, repeated under other paths


def write_run(root: Path, images: int, preset: str) -> None:
    """A run folder of ``images`` images' synthetic regions of a random ``preset`` SAN (its manifest, its number of
    queries and embedding width, a vocabulary of 20 names)."""
    from pipeline.vocabulary import Vocabulary

    names = tuple(f"class {i}" for i in range(20))
    vocabulary = Vocabulary(names, tuple(() for _ in names))
    queries, dim = PRESETS[preset]().side_adapter.num_queries, EMBED_DIMS[preset]
    identity = {"model": f"random:{preset}", "config": None, "templates": None}
    root.mkdir(parents=True)
    manifest = {"identity": identity, "vocabulary": vocabulary.to_json(), "other_names": []}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(len(names) + 1, dim))
    pool = directions[rng.integers(0, len(directions), (POOL, queries))] + rng.normal(0, 0.5, (POOL, queries, dim))
    pool = (pool / np.linalg.norm(pool, axis=2, keepdims=True)).astype(np.float16)
    masks = rng.normal(0.0, 3.0, (queries, *MASK)).astype(np.float16)
    for start in range(0, images, SHARD_IMAGES):
        rows = []
        for i in range(start, min(start + SHARD_IMAGES, images)):
            path = f"/photos/{i // 1000:04d}/{i:07d}.jpg"
            rows.append(regions_row(path, image_id(path), 0, "fp16", masks, pool[i % POOL], PADDED, INPUT, ORIGINAL))
        write_shard_file(pa.Table.from_pylist(rows, schema=REGION_SCHEMA), RunOutput(root).regions_dir)


def timed_search(run: Path, query: str) -> tuple[float, float]:
    """Seconds and peak RSS (GiB) of ``jobs/search.py RUN QUERY`` in its own process."""
    command = [sys.executable, str(ROOT / "jobs" / "search.py"), str(run), query, "--no-progress"]
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"search failed with status {process.returncode}")
    return time.perf_counter() - started, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    parser.add_argument(
        "--model", choices=sorted(EMBED_DIMS), default="san_vit_b_16", help="the random SAN whose regions are searched"
    )
    args = parser.parse_args()
    from _report import cpu_description

    lines = [
        f"Region search (`jobs/search.py RUN forklift`, top 20), synthetic float16 regions of a random {args.model}; "
        f"CPU: {cpu_description()}, {os.cpu_count()} CPUs",
        "",
        "| images | regions on disk | search, whole command | images/s | peak RSS |",
        "| --- | --- | --- | --- | --- |",
    ]
    for images in args.images:
        with tempfile.TemporaryDirectory(prefix="region-search-") as folder:
            run = Path(folder) / "run"
            write_run(run, images, args.model)
            size = sum(f.stat().st_size for f in (RunOutput(run).regions_dir).iterdir()) / 2**30
            timed_search(run, "forklift")  # once to warm the page cache, as a second search on a run would be
            seconds, peak = timed_search(run, "forklift")
        lines.append(f"| {images:,} | {size:.2f} GiB | {seconds:.1f} s | {images / seconds:,.0f} | {peak:.2f} GiB |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()
