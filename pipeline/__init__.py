"""Ray Data labeling pipeline: vocabulary, image decoding, segments, COCO and Parquet output."""
