"""docs/architecture.md names every module of san/, pipeline/ and jobs/ once, in one table row, and no module that
is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `((?:san|pipeline|jobs)/[\w/]+\.py)` \| .+ \|$", re.M)


def test_every_module_has_one_row_and_every_row_a_module() -> None:
    rows = ROW.findall((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    modules = {
        str(path.relative_to(ROOT))
        for package in ("san", "pipeline", "jobs")
        for path in (ROOT / package).rglob("*.py")
        if path.read_text(encoding="utf-8").strip()  # empty package markers need no row
    }
    assert sorted(m for m in modules if m not in rows) == [], "modules without a row"
    assert sorted(r for r in rows if r not in modules) == [], "rows of modules that are gone"
    assert len(rows) == len(set(rows)), "a module named twice"
