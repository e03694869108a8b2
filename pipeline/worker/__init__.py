"""The streaming worker (``python -m pipeline run``): Kafka records in, alerts, score events and
dead letters out, offsets committed once the output is durable.

``loop`` wires the stages; each stage is its own module: ``batching`` (micro-batches),
``codec`` (bytes to arrays), ``serving``/``reload``/``resilient`` (the model being served),
``processing``/``events``/``shadow`` (scores to output), ``sink`` (durable output and commits),
``retry`` (failure policy), ``metrics``/``drift`` (observability), ``settings``.

May import: ``pipeline.contract``, ``pipeline.common``, ``pipeline.kafka``. Never the dev stack,
the alert consumers or offline scoring. This package's ``__init__`` imports nothing, so reading
settings does not pull in torch.
"""
