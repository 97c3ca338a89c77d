"""The README's commands stay true: every job command it shows parses with that job's own arguments,
and its main command runs (with --smoke-test, since the released weights cannot be had offline)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# An error line of Ray's C++ core (``[2026-01-01 10:00:00,123 E 123 123] core_worker.cc:...``) or of its Python
# loggers (``2026-01-01 10:00:00,123\tERROR exceptions.py:88 -- ...``).
RAY_ERROR_LINE = re.compile(r"\[\S+ \S+ E \d+ \d+\] |\S+ \S+\s+ERROR \S+:\d+ -- ")


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


def job_invocations() -> list[tuple[str, list[str]]]:
    """(job name, its arguments) for every `jobs/<name>.py ...` in the README."""
    found = []
    for command in readme_commands():
        words = shlex.split(command.replace("$PWD", str(ROOT)))
        for i, word in enumerate(words):
            match = re.fullmatch(r"jobs/(\w+)\.py", word)
            if match:
                found.append((match[1], words[i + 1 :]))
    return found


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"readme_job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_every_job() -> None:
    shown = {name for name, _ in job_invocations()}
    assert shown >= {"label", "evaluate", "review", "export", "train", "eval_set_inputs"}


@pytest.mark.parametrize(("name", "arguments"), job_invocations(), ids=lambda v: v if isinstance(v, str) else " ")
def test_readme_job_command_parses(name: str, arguments: list[str]) -> None:
    job = load_job(name)
    if arguments == ["--help"]:
        with pytest.raises(SystemExit) as exit_info:
            job.parse_args(arguments)
        assert exit_info.value.code == 0
    else:
        job.parse_args(arguments)


@pytest.mark.slow
def test_readme_main_command_runs_in_smoke_mode(tmp_path: Path) -> None:
    main = next(command for command in readme_commands() if "jobs/label.py" in command)
    words = shlex.split(main)
    words[words.index("--output") + 1] = str(tmp_path / "labels")
    words[0] = sys.executable if words[0].endswith("python") else words[0]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    run = subprocess.run(
        [*words, "--smoke-test", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert not RAY_ERROR_LINE.search(run.stderr), f"a normal run prints no Ray error line: {run.stderr[-3000:]}"
    assert "Warning:" not in run.stderr, f"nor a Python warning: {run.stderr[-3000:]}"
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    assert manifest["counts"]["labeled"] == len(list((ROOT / "samples" / "images").iterdir()))


def test_readme_main_command_offline_stops_fast_with_instructions(tmp_path: Path) -> None:
    """Without the weights and without the hub (an endpoint that refuses connections, as offline), the first
    command says what to download and where to put it, at once: no retries (they took 30 s)."""
    main = next(command for command in readme_commands() if "jobs/label.py" in command)
    words = shlex.split(main)
    words[words.index("--output") + 1] = str(tmp_path / "labels")
    words[0] = sys.executable if words[0].endswith("python") else words[0]
    env = {k: v for k, v in os.environ.items() if k not in ("SAN_WEIGHTS", "HF_HUB_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", RAY_ADDRESS="local")
    started = time.monotonic()
    run = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "Traceback" not in run.stderr and "Retrying" not in run.stderr
    assert "san_vit_b_16.pth" in lines[0] and "--model /path/to/san_vit_b_16.pth" in lines[0]
    assert "SAN_WEIGHTS=" in lines[0] and "--smoke-test" in lines[-1]
    assert seconds < 20, f"{seconds:.1f} s to the message"
    assert not (tmp_path / "labels").exists()
