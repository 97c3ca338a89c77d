"""The labeling job's last stage: Ray tasks write the Parquet files, and only a small record per file
reaches the driver (counts for its progress bar and manifest), never label bytes."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..outputs import ERROR_SCHEMA, PREDICTION_SCHEMA, RunOutput

#: One row per file written: images labeled and failed, and the model calls those images took
#: (each image counts ``1 / batch_images`` of its call).
RECORD_SCHEMA = pa.schema([("labeled", pa.int64()), ("failed", pa.int64()), ("model_calls", pa.float64())])


@dataclass
class WriteStage:
    """CPU stage: ``pipeline.label.encode.ENCODED_SCHEMA`` rows -> one predictions file and one errors file,
    each whole or absent (:meth:`~pipeline.outputs.RunOutput.write_tables`) -> one ``RECORD_SCHEMA`` row.

    ``output`` is the run's output folder, which every node running these tasks must see (a shared
    filesystem on a multi-node cluster)."""

    output: str

    def __call__(self, batch: pa.Table) -> pa.Table:
        failed = pc.not_equal(batch.column("error"), "")
        predictions = batch.filter(pc.invert(failed)).select(PREDICTION_SCHEMA.names)
        errors = batch.filter(failed).select(ERROR_SCHEMA.names)
        RunOutput(self.output).write_tables(predictions, errors)
        fill = batch.column("batch_images").to_numpy()
        calls = float((1.0 / fill[fill > 0]).sum())
        return pa.table([[predictions.num_rows], [errors.num_rows], [calls]], schema=RECORD_SCHEMA)
