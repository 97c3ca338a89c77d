"""``jobs/label.py`` for the tests that stop a job half way (Ctrl-C, SIGKILL, SIGTERM):

    python tests/gated_label_job.py HELD_IMAGE GATE [jobs/label.py's arguments]

The predictor holds the batch that holds ``HELD_IMAGE`` while the file ``GATE`` exists. Listed last, that
image lets every other one through, so the job has finished rows to save but cannot end before the test
has acted, however fast or slow the machine (a stand-in for a file on a stalled network share). Without
``GATE`` it is ``jobs/label.py``.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import pipeline.label.batching
import pipeline.label.job
from pipeline.label.model_stage import ModelStage


class GatedModelStage(ModelStage):
    """Defined in ``__main__``: Ray's cloudpickle sends the class (with ``held`` and ``gate``) to the workers
    by value. Its rows are model batches: lists of paths."""

    held = ""
    gate = ""

    def __call__(self, batch):
        while any(self.held in list(paths) for paths in batch["image_path"]) and Path(self.gate).exists():
            time.sleep(0.05)
        return super().__call__(batch)


if __name__ == "__main__":
    GatedModelStage.held, GatedModelStage.gate = sys.argv.pop(1), sys.argv.pop(1)
    # One model batch per block: a block holds up its batches, and the tests' few images fit in one block.
    pipeline.label.batching.BLOCK_IMAGES = 1
    pipeline.label.job.ModelStage = GatedModelStage
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "jobs" / "label.py"), run_name="__main__")
