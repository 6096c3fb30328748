"""The webhook receiver: the only door into the pipeline."""
