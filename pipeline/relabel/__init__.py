"""``jobs/relabel.py``: a labeling run's kept regions labeled again with another vocabulary, without the images
or the image model."""
