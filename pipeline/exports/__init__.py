"""Exports of a labeling run's or a reviewed dataset's labels to other tools' formats (``jobs/export.py
--format``), one module per format; :mod:`pipeline.exports.run` picks the format. The formats and their
conventions: ``docs/exports.md``."""
