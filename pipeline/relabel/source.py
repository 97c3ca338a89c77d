"""The run ``jobs/relabel.py`` reads: a finished labeling run that kept its regions (``jobs/label.py
--keep-regions``), the options it was labeled with, and its regions files."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from san.errors import OptionError

from ..cli import flag
from ..label.options import LabelOptions
from ..output_shards import read_shard, shard_files
from ..outputs import MANIFEST, RunOutput, manifest_identity

# LabelOptions fields a manifest holds as JSON lists.
_TUPLES = ("workers", "tta_sizes")


@dataclass(frozen=True)
class SourceRun:
    """A labeling run to relabel: its folder (``output``), its ``manifest`` and the dtype of its regions."""

    output: RunOutput
    manifest: dict[str, Any]
    regions_dtype: str

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> SourceRun:
        """The run in ``folder``, or an :class:`OptionError` in one line saying why it cannot be relabeled: no
        labeling run's folder, a run that did not finish, or one labeled without regions."""
        output = RunOutput(folder)
        path = output.root / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        if manifest_identity(manifest) is None or not isinstance(manifest.get("options"), dict):
            raise OptionError(
                f"{output.root} is not a labeling run's folder (it has no readable manifest.json naming how it was "
                "labeled); give the folder a jobs/label.py run wrote"
            )
        if manifest.get("status") != "complete":
            raise OptionError(
                f"the run {output.root} is not complete (its manifest.json says {manifest.get('status')!r}): rerun "
                "its labeling command to finish it, then relabel it"
            )
        dtype = manifest["identity"].get("keep_regions")
        if not dtype:
            keep = flag("keep_regions")
            raise OptionError(
                f"the run {output.root} was labeled without {keep}, so it has no regions to relabel: label its "
                f"images again with jobs/label.py {keep} (fp32 for label maps identical to a fresh run's)"
            )
        return cls(output, manifest, dtype)

    def label_options(self, **changes: Any) -> LabelOptions:
        """The options this run was labeled with, with ``changes``: those of a fresh labeling run (checked as
        ``LabelOptions`` checks them)."""
        recorded = self.manifest["options"]
        names = {f.name for f in dataclasses.fields(LabelOptions)} - {"command"}
        values = {name: recorded[name] for name in names if name in recorded}
        values |= {name: tuple(values[name]) for name in _TUPLES if values.get(name) is not None}
        return LabelOptions(**{**values, **changes})

    @property
    def threads(self) -> int:
        """The CPU threads of the run's model workers (1 for GPU workers): the post-processing sums in the same
        order only with as many threads (MKL splits a product by thread)."""
        resources = self.manifest.get("resources") or {}
        return int(resources.get("threads_per_worker") or 1) if resources.get("device") == "cpu" else 1

    def regions_files(self) -> list[Path]:
        """The run's regions files (``regions/part-*.parquet``)."""
        return shard_files(self.output.regions_dir)

    def errors(self) -> pa.Table:
        """The run's ``errors.parquet`` (``image_path``, ``error``): the inputs it could not label, and so has no
        regions of."""
        return read_shard(self.output.root / "errors.parquet", columns=["image_path", "error"])
