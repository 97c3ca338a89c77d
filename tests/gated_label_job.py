"""``jobs/label.py`` for the tests that stop a job half way (Ctrl-C, SIGKILL, SIGTERM):

    python tests/gated_label_job.py GATE [jobs/label.py's arguments]

Each predictor worker labels its first :data:`OPEN_IMAGES` images; after that, while the file ``GATE``
exists, it holds every batch with an image to label. So the job has finished rows to save but cannot end
before the test has acted, however fast or slow the machine. Without ``GATE`` it is ``jobs/label.py``.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import pipeline.label.job
from pipeline.label.predict import PredictStage

OPEN_IMAGES = 4


class GatedPredictStage(PredictStage):
    """Defined in ``__main__``: Ray's cloudpickle sends the class (and ``gate``) to the workers by value."""

    gate = ""

    def __call__(self, batch):
        labelable = sum(1 for error in batch["error"] if not error)
        self.labeled = getattr(self, "labeled", 0)
        while labelable and self.labeled >= OPEN_IMAGES and Path(self.gate).exists():
            time.sleep(0.05)
        self.labeled += labelable
        return super().__call__(batch)


if __name__ == "__main__":
    GatedPredictStage.gate = sys.argv.pop(1)
    pipeline.label.job.PredictStage = GatedPredictStage
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "jobs" / "label.py"), run_name="__main__")
