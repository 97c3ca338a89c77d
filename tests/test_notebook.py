"""notebooks/quickstart.ipynb: committed without outputs, and every cell runs top to bottom.

The run uses a kernel on this interpreter (the project's venv), a private FiftyOne database (the variables
:func:`run_builder.isolate_fiftyone` sets, here with a folder of this test's own, inherited by the kernel
through the environment; the ``mongod`` the kernel starts is waited for and its folder removed) and a
temporary output folder (``SAN_QUICKSTART_OUT``). Without released weights on the machine the notebook takes the
smoke-test model; it must say which model it used.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
import warnings
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
KERNEL = "san-quickstart-test"
TIMEOUT_S = 600  # whole notebook; about 1 minute on 2 CPUs with the smoke-test model


def _code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_committed_notebook_has_no_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = _code_cells(notebook)
    assert cells
    for cell in cells:
        assert cell["outputs"] == [], f"cell {cell.get('id')} has outputs: rebuild with notebooks/build_quickstart.py"
        assert cell["execution_count"] is None, f"cell {cell.get('id')} has an execution count"
    assert "widgets" not in notebook["metadata"]


def _kernel_spec_dir(folder: Path) -> Path:
    """A kernelspec that runs this interpreter, so that no user-level ``python3`` kernel can take its place."""
    spec = folder / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return folder


def _wait_for_mongod(folder: Path, timeout: float = 60) -> bool:
    """Wait until no ``mongod`` serves ``folder`` (the kernel's FiftyOne service stops it once the kernel has
    exited); True when none is left."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "mongod" in (process.info["name"] or "") and str(folder) in cmdline:
                alive.append(process)
        if not alive or time.monotonic() > deadline:
            return not alive
        psutil.wait_procs(alive, timeout=1)


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ipykernel  # noqa: F401  (the kernel the notebook runs in; a test extra)
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    database = tmp_path / "fiftyone-db"
    fiftyone_env = {
        "FIFTYONE_DATABASE_DIR": str(database),
        "FIFTYONE_DATABASE_NAME": f"san-tests-notebook-{uuid.uuid4().hex[:12]}",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DO_NOT_TRACK": "true",
    }
    for name, value in fiftyone_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SAN_QUICKSTART_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel then picks its inline backend: figures become outputs
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the notebook's own local Ray, not some running cluster

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")
    probe.id = "test-probe"
    notebook.cells.insert(0, probe)
    specs = KernelSpecManager(kernel_dirs=[str(_kernel_spec_dir(tmp_path / "kernels"))])
    client = nbclient.NotebookClient(
        notebook,
        km=AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs),
        timeout=TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # as Jupyter would: cwd = notebooks/
    )
    started = time.monotonic()
    try:
        client.execute(cleanup_kc=True)  # shuts the kernel down at the end (we made the kernel manager)
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"the notebook failed:\n{error}")
    finally:
        nbformat.write(notebook, tmp_path / "quickstart.executed.ipynb")  # for a look after a failure
        if _wait_for_mongod(database):
            shutil.rmtree(database, ignore_errors=True)  # 300 MB of preallocated journal
        else:
            warnings.warn(f"a mongod still serves {database}; left in place", stacklevel=1)
    elapsed = time.monotonic() - started
    print(f"notebook ran in {elapsed:.0f} s")

    assert _text(notebook.cells[0]).strip() == sys.executable
    errors = [o for cell in _code_cells(notebook) for o in cell.outputs if o.get("output_type") == "error"]
    assert not errors
    by_id = {cell.get("id"): cell for cell in notebook.cells}
    label_output = _text(by_id["label"])
    assert "model used: " in label_output
    used = "released san_vit_b_16 weights" if "model used: released" in label_output else "smoke-test model"
    assert f"model used: {used}" in label_output
    assert "TOY ground truth" in _text(by_id["evaluate"])
    assert "the App was not started" in _text(by_id["launch"])
    assert any("image/png" in o.get("data", {}) for o in by_id["show"].outputs), "no figure in step 2"
    out = tmp_path / "out"
    assert (out / "labels" / "manifest.json").is_file()
    assert (out / "labels" / "metrics.json").is_file()
    assert json.loads((out / "reviewed_coco.json").read_text())["annotations"]
