"""The labeling job's last stage: Ray tasks write the Parquet files, and only a small record per file
reaches the driver (counts for its progress bar and manifest), never label bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..disk_space import is_out_of_space
from ..output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA
from ..outputs import RunOutput
from ..region_shards import REGION_SCHEMA

#: One row per file written: images labeled and failed, and the model calls those images took
#: (each image counts ``1 / batch_images`` of its call); ``no_space``: why the files could not be written
#: for want of space ("" when they were).
RECORD_SCHEMA = pa.schema(
    [("labeled", pa.int64()), ("failed", pa.int64()), ("model_calls", pa.float64()), ("no_space", pa.string())]
)


@dataclass
class WriteStage:
    """CPU stage: ``pipeline.label.encode.ENCODED_SCHEMA`` rows -> one predictions file and one errors file
    (and of ``ENCODED_REGIONS_SCHEMA`` rows also one regions file), each whole or absent
    (:meth:`~pipeline.outputs.RunOutput.write_tables`) -> one ``RECORD_SCHEMA`` row (also when the disk is full:
    then the row says so).

    ``output`` is the run's output folder, which every node running these tasks must see (a shared
    filesystem on a multi-node cluster); ``generation``: the job's number on that folder, on every row
    (:meth:`~pipeline.outputs.RunOutput.next_generation`)."""

    output: str
    generation: int

    def __call__(self, batch: pa.Table) -> pa.Table:
        failed = pc.not_equal(batch.column("error"), "")
        labeled = batch.filter(pc.invert(failed))
        predictions = self._of_this_job(labeled, PREDICTION_SCHEMA)
        errors = self._of_this_job(batch.filter(failed), ERROR_SCHEMA)
        regions = self._of_this_job(labeled, REGION_SCHEMA) if "mask_preds" in batch.column_names else None
        try:
            RunOutput(self.output).write_tables(predictions, errors, regions)
        except OSError as error:
            if not is_out_of_space(error):
                raise
            # Reported to the driver, which stops the run in one line (raised, Ray would print this task's traceback).
            return pa.table([[0], [0], [0.0], [os.strerror(error.errno)]], schema=RECORD_SCHEMA)
        fill = batch.column("batch_images").to_numpy()
        calls = float((1.0 / fill[fill > 0]).sum())
        return pa.table([[predictions.num_rows], [errors.num_rows], [calls], [""]], schema=RECORD_SCHEMA)

    def _of_this_job(self, rows: pa.Table, schema: pa.Schema) -> pa.Table:
        """``rows`` with the columns of ``schema``, their ``generation`` this job's."""
        generation = pa.array([self.generation] * rows.num_rows, pa.int64())
        return rows.set_column(rows.schema.get_field_index("generation"), "generation", generation).select(schema.names)
