"""Inputs at scale: the driver's time and peak memory from its start to the first file written, for
1,000,000 listed paths (a list file, and a folder tree) with ``--limit 1000`` and ``--model null``.

    python benchmarks/listing_scale.py --paths 1000000 --write BENCHMARKS.md

The paths are hard links to copies of one small JPEG (1000 folders of 1000), so the listing is what is measured.
Each job runs in its own process (a fresh driver and local Ray), whose memory is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _report import emit
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000
LINKS_PER_FILE = 50 * PER_FOLDER


def make_inputs(folder: Path, paths: int) -> tuple[Path, Path]:
    """A folder tree of ``paths`` hard links to a few copies of one 64x48 JPEG, and a list file naming each."""
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tree, listing, sources = folder / "tree", folder / "paths.txt", folder / "sources"
    sources.mkdir()
    with open(listing, "w", encoding="utf-8") as out:
        for start in range(0, paths, PER_FOLDER):
            source = sources / f"{start // LINKS_PER_FILE}.jpg"  # a file takes at most 65000 links (ext4)
            if not source.exists():
                Image.fromarray(pixels).save(source)
            sub = tree / f"d{start // PER_FOLDER:05d}"
            sub.mkdir(parents=True)
            for i in range(start, min(start + PER_FOLDER, paths)):
                path = sub / f"{i:07d}.jpg"
                os.link(source, path)
                out.write(f"{path}\n")
    return tree, listing


def one(spec: str, output: str, limit: int) -> dict[str, float]:
    """In this process: the job on ``spec``; seconds and peak RSS (GiB) until its first file appears."""
    from pipeline.label.job import LabelOptions, run_label_job

    started, process, peak = time.perf_counter(), psutil.Process(), [0, None]
    first = Path(output) / "predictions"

    def sample() -> None:
        while peak[1] is None:
            peak[0] = max(peak[0], process.memory_info().rss)
            if first.is_dir() and any(first.iterdir()):
                peak[1] = time.perf_counter() - started
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = LabelOptions(
        vocab=str(ROOT / "samples" / "vocab.txt"), input=spec, output=output, model="null", limit=limit, progress=False
    )
    manifest = run_label_job(options)
    total = time.perf_counter() - started
    sampler.join(timeout=1)
    return {
        "first_file_seconds": peak[1] if peak[1] is not None else float("nan"),
        "peak_rss_gib": peak[0] / 2**30,
        "seconds": total,
        "labeled": manifest["counts"]["new_labeled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    parser.add_argument("--one", nargs=2, metavar=("SPEC", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.limit)))
        return
    command = shlex.join(["python", *sys.argv])
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        made = time.perf_counter()
        tree, listing = make_inputs(Path(tmp), args.paths)
        print(f"made {args.paths} paths in {time.perf_counter() - made:.0f} s", file=sys.stderr)
        for name, spec in (("list file", listing), ("folder tree", tree)):
            env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
            run = [sys.executable, __file__, "--limit", str(args.limit), "--one", str(spec), f"{tmp}/out-{name[0]}"]
            result = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT)
            if result.returncode:
                raise SystemExit(f"{name}: {result.stderr[-3000:]}")
            rows.append((name, json.loads(result.stdout.strip().splitlines()[-1]), os.getloadavg()[0]))
    table = [
        f"### Listing {args.paths:,} paths, `--limit {args.limit}` ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`--model null`, local Ray on this machine ({os.cpu_count()} CPUs). Command: `{command}`",
        "",
        "| input | driver start -> first file, s | driver peak RSS until then, GiB | whole job, s | load average |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {name} | {r['first_file_seconds']:.1f} | {r['peak_rss_gib']:.2f} | {r['seconds']:.1f} | {load:.2f} |"
            for name, r, load in rows
        ],
        "",
    ]
    emit(table, args.write)


if __name__ == "__main__":
    main()
