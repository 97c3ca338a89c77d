"""The packages' modules import each other without cycles (imports inside functions count: a lazy import is still
a dependency), and ``san`` imports nothing from ``pipeline`` (docs/architecture.md's layers); what a job's start and
its CPU workers import leaves the heavy modules out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("san", "pipeline")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (``from package import name`` counts ``package.name``
    when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", sorted(m for m in import_graph() if m.startswith("san")))
def test_the_model_library_imports_no_pipeline_module(module: str) -> None:
    assert not {m for m in import_graph()[module] if m.startswith("pipeline")}


def modules_imported(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_the_cpu_stages_import_no_torch() -> None:
    """What a task worker of the labeling job imports to run its stages (and a ``--model null`` actor): no torch,
    whose import costs each worker process seconds of its start."""
    stages = ["resume", "batching", "decode", "encode", "write", "model_stage", "attempts"]
    code = "import ray.data, san.settings\n" + "".join(f"import pipeline.label.{stage}\n" for stage in stages)
    assert "torch" not in modules_imported(code)


def test_checking_a_vocabulary_imports_no_open_clip_package() -> None:
    """The job checks its vocabulary's prompt lengths with open_clip's tokenizer before anything else: without
    open_clip's package (torchvision, torch._dynamo), seconds of every job's start."""
    code = (
        "from san.modeling.prompts import VILD_TEMPLATES, prompt_length_problem\n"
        "assert prompt_length_problem('cat', VILD_TEMPLATES) is None"
    )
    assert not {"open_clip", "torchvision"} & modules_imported(code)


def test_the_label_jobs_driver_checks_its_vocabulary_without_torch() -> None:
    """Start-up: jobs/label.py's imports and its vocabulary check (before Ray starts) import no torch, two seconds of
    every job's start on 2 CPUs; the model's actors import it where they need it."""
    code = (
        "sys.path.insert(0, 'jobs')\n"
        "import label\n"
        "from pipeline.label.job import vocabulary_and_other\n"
        "options = label.dataclass_from_args(label.LabelOptions, label.parse_args(\n"
        "    ['--vocab', 'samples/vocab.txt', '--input', 'samples/images', '--output', 'unused', '--model', 'null']))\n"
        "vocabulary, other = vocabulary_and_other(options)\n"
        "assert len(vocabulary.names) == 8 and other"
    )
    assert "torch" not in modules_imported(code)
