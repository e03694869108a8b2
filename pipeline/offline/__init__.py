"""Offline scoring (``python -m pipeline score``): a Parquet dataset scored with a published model
through the same contract code as the worker, for backfills and candidate dry runs.

May import: ``pipeline.contract`` and ``pipeline.common``. No Kafka.
"""
