"""Kafka plumbing shared by the worker, the alert consumers, the trainer's announcement and the
dev stack: connection settings, client construction, error sorting, topic creation.

May import: ``pipeline.common``, ``pipeline.contract`` and kafka-python. Nothing here knows
about models or batches.
"""
