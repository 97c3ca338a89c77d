"""This project's SAN against the official code, side by side: same weights, same image, same threads.

The official SAN (MendelXu/SAN) runs in its own Python environment, in a worker process that builds it
(ViT-B/16 as released, random weights), writes the weights in the official release layout and then
times one forward per request. This script loads those weights with ``san.load_official``, checks
that its fp32 scores equal the official ``sem_seg`` (max abs difference), and times both codes taking
turns: each round runs the official forward, then ours (fp32, and bf16 where asked), rotating the order
every round, so that load from other processes falls on both alike. It reports the best (and median) of
``--repeats`` rounds after one warm-up round, the load average before and after, and the command.

Set-up of the official side (not part of this repository, never imported here):

1. The official tree: fetch github:MendelXu/SAN (``git clone https://github.com/MendelXu/SAN``, or
   ``git -C <mirror> archive HEAD | tar x -C <dir>``); give it as ``--official-tree`` or ``$SANREF``.
2. Its environment: a separate venv with ``pip install torch==2.14.1 torchvision==0.29.1
   open_clip_torch==2.16.0 timm==0.9.16 scipy`` (the official package is also named ``san``, so it can
   never share this project's venv); its python as ``--official-python`` or ``$SAN_OFFICIAL_PYTHON``.
3. The harness that builds the official model without detectron2 (``official_san.py`` and its
   detectron2/fvcore stand-ins, e.g. the team's ``shared/official-speed`` folder); ``--harness`` or
   ``$SAN_OFFICIAL_HARNESS``.

    python benchmarks/speed_vs_official.py --official-tree ../SAN --official-python ../offvenv/bin/python \\
        --harness ../shared/official-speed --dtypes fp32 bf16 --repeats 6 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import cpu_description, emit

WORKER = Path(__file__).with_name("_official_worker.py")
SETUP = "Set-up of the official side" + __doc__.split("Set-up of the official side")[1].split("\n\n    python")[0]


class OfficialWorker:
    """The official SAN in its own process: ``run()`` times one forward there."""

    def __init__(self, python: str, tree: str, harness: str, folder: Path, size: int, threads: int):
        command = [python, str(WORKER), harness, str(folder), str(size), str(threads)]
        env = {**os.environ, "SANREF": tree, "PYTHONPATH": ""}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._line() != "ready":
            raise RuntimeError("the official worker stopped before it was ready (its error is above)")

    def _line(self) -> str:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the official worker exited with status {self.process.wait()}")
        return line.strip()

    def run(self) -> float:
        self.process.stdin.write("run\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return float(self._line())

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait()


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def missing_setup(args: argparse.Namespace) -> list[str]:
    """The options of the official side that are not given or do not exist."""
    checks = {
        "--official-tree / $SANREF": args.official_tree and Path(args.official_tree, "san", "model", "san.py"),
        "--official-python / $SAN_OFFICIAL_PYTHON": args.official_python and Path(args.official_python),
        "--harness / $SAN_OFFICIAL_HARNESS": args.harness and Path(args.harness, "official_san.py"),
    }
    return [f"{name}: {path or 'not given'}" for name, path in checks.items() if not path or not path.exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-tree", default=os.environ.get("SANREF"), help="the official SAN source tree")
    parser.add_argument(
        "--official-python", default=os.environ.get("SAN_OFFICIAL_PYTHON"), help="python of the official venv"
    )
    parser.add_argument(
        "--harness", default=os.environ.get("SAN_OFFICIAL_HARNESS"), help="folder holding official_san.py + stubs"
    )
    parser.add_argument("--size", type=int, default=640, help="square image side (default 640)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both processes (default 2)")
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds after the warm-up (default 6)")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["fp32", "bf16"],
        help="this project's precisions to time (default: fp32, and bf16 where the CPU has bf16 units)",
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    missing = missing_setup(args)
    if missing:
        parser.exit(2, "the official side is not set up:\n  " + "\n  ".join(missing) + f"\n{SETUP}\n")
    # torch and san load only now: a missing set-up is answered at once.
    import torch

    import san
    from san.precision import cpu_bf16_units, cpu_bf16_warning

    args.dtypes = args.dtypes or (["fp32", "bf16"] if cpu_bf16_units() else ["fp32"])
    if "bf16" in args.dtypes and cpu_bf16_warning():
        print(f"warning: {cpu_bf16_warning()}", flush=True)

    torch.set_num_threads(args.threads)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        official = OfficialWorker(
            args.official_python, args.official_tree, args.harness, Path(folder), args.size, args.threads
        )
        try:
            bundle = torch.load(Path(folder, "input.pt"))
            reference = torch.load(Path(folder, "sem_seg.pt"))
            models = {
                dtype: san.load_official(Path(folder, "checkpoint.pth"), Path(folder, "config.json"))
                for dtype in args.dtypes
            }
            if "bf16" in models:
                models["bf16"].cast_image_trunk(torch.bfloat16)
            image, vocabulary = [bundle["image"]], bundle["vocabulary"]
            runners = {"official fp32": official.run}
            for dtype, model in models.items():
                runners[f"ours {dtype}"] = lambda model=model: timed(lambda: model.predict_scores(image, vocabulary))
            outputs = {dtype: model.predict_scores(image, vocabulary)[0] for dtype, model in models.items()}
            times: dict[str, list[float]] = {name: [] for name in runners}
            names = list(runners)
            for round_ in range(args.repeats + 1):  # round 0 is the warm-up
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                seconds = {name: runners[name]() for name in order}
                print(f"round {round_}: " + ", ".join(f"{n} {s:.3f} s" for n, s in seconds.items()), flush=True)
                for name, value in seconds.items():
                    times[name] += [value] if round_ else []
        finally:
            official.close()
    load_after = os.getloadavg()

    official_best = min(times["official fp32"])
    reference_labels = reference.argmax(0)
    lines = [
        f"### Side by side with the official code ({time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        f"CPU: {cpu_description()}, {args.threads} threads in each process, "
        f"torch {torch.__version__}; official SAN at MendelXu/SAN `{_commit(args.official_tree)}`; random "
        f"ViT-B/16 weights, {len(vocabulary)} classes, one {args.size}x{args.size} image; the two codes take "
        f"turns, best and median of {args.repeats} rounds after a warm-up round. Load average (1, 5, 15 min): "
        f"{_load(load_before)} before, {_load(load_after)} after. Command: `{command}`",
        "",
        "| code | s/image best | s/image median | images/s | vs official | max abs diff to official "
        "| label map = official's |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| official fp32 | {official_best:.3f} | {statistics.median(times['official fp32']):.3f} "
        f"| {1 / official_best:.3f} | 1.00x | 0 | 100% |",
    ]
    for dtype, scores in outputs.items():
        best = min(times[f"ours {dtype}"])
        agreement = (scores.argmax(0) == reference_labels).double().mean().item()
        lines.append(
            f"| ours {dtype} | {best:.3f} | {statistics.median(times[f'ours {dtype}']):.3f} | {1 / best:.3f} "
            f"| {official_best / best:.2f}x | {(scores - reference).abs().max().item():.1e} | {agreement:.3%} |"
        )
    emit(lines, args.write)


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def _commit(tree: str) -> str:
    """The official tree's commit where it is a git checkout, else its folder name."""
    found = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else Path(tree).name


if __name__ == "__main__":
    main()
