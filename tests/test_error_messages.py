"""The rule for messages (san/errors.py): library code names an option as ```name```, never as a command-line
flag, and each job shows it as its own flag (``pipeline.cli.user_message``). Checked on every error the code
under san/ and pipeline/ builds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def error_texts(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of the string parts of every ``SomethingError(...)`` call in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if not name.endswith("Error"):
            continue
        for argument in node.args[:1]:
            for part in ast.walk(argument):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((node.lineno, part.value))
    return found


@pytest.mark.parametrize("package", ["san", "pipeline"])
def test_library_errors_name_options_not_flags(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in error_texts(path)
        if FLAG.search(text)
    ]
    assert not offenders, "write `option` instead of --option:\n" + "\n".join(offenders)
