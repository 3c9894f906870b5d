"""Evaluation: the held-out data, the lenses (embeddings -> named metrics), the report and plots."""
