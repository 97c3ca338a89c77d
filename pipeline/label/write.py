"""The labeling job's last stage: Ray tasks write the Parquet files, and only a small record per file
reaches the driver (counts for its progress bar and manifest), never label bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..outputs import ERROR_SCHEMA, PREDICTION_SCHEMA, RunOutput, is_out_of_space

#: One row per file written: images labeled and failed, and the model calls those images took
#: (each image counts ``1 / batch_images`` of its call); ``no_space``: why the files could not be written
#: for want of space ("" when they were).
RECORD_SCHEMA = pa.schema(
    [("labeled", pa.int64()), ("failed", pa.int64()), ("model_calls", pa.float64()), ("no_space", pa.string())]
)


@dataclass
class WriteStage:
    """CPU stage: ``pipeline.label.encode.ENCODED_SCHEMA`` rows -> one predictions file and one errors file,
    each whole or absent (:meth:`~pipeline.outputs.RunOutput.write_tables`) -> one ``RECORD_SCHEMA`` row (also
    when the disk is full: then the row says so).

    ``output`` is the run's output folder, which every node running these tasks must see (a shared
    filesystem on a multi-node cluster)."""

    output: str

    def __call__(self, batch: pa.Table) -> pa.Table:
        failed = pc.not_equal(batch.column("error"), "")
        predictions = batch.filter(pc.invert(failed)).select(PREDICTION_SCHEMA.names)
        errors = batch.filter(failed).select(ERROR_SCHEMA.names)
        try:
            RunOutput(self.output).write_tables(predictions, errors)
        except OSError as error:
            if not is_out_of_space(error):
                raise
            # Reported to the driver, which stops the run in one line (raised, Ray would print this task's traceback).
            return pa.table([[0], [0], [0.0], [os.strerror(error.errno)]], schema=RECORD_SCHEMA)
        fill = batch.column("batch_images").to_numpy()
        calls = float((1.0 / fill[fill > 0]).sum())
        return pa.table([[predictions.num_rows], [errors.num_rows], [calls], [""]], schema=RECORD_SCHEMA)
