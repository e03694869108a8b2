"""What a failed batch is: where it failed (a metric label), and what to tell the operator.

``stage_of`` labels ``pipeline_batch_failures_total{stage}``; ``describe_batch`` names a batch
by its coordinates (``topic[partition] offset=``) in every log line and error about it;
``giving_up`` is the error the worker exits with once retries are spent (Kafka failures exit
4, anything else 1).
"""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaError

from pipeline.contract.exceptions import DeliveryError, KafkaIOError, PipelineError, ScoringError


def stage_of(exc: BaseException) -> str:
    """Where the batch failed: score, deliver, commit or process."""
    if isinstance(exc, ScoringError):
        return "score"
    if isinstance(exc, DeliveryError):
        return "deliver"
    if isinstance(exc, KafkaIOError | KafkaError):
        return "commit"
    return "process"


def is_kafka_failure(exc: BaseException) -> bool:
    """A failure of talking to Kafka (the producer must be replaced before a retry)."""
    return isinstance(exc, KafkaError | KafkaIOError)


def giving_up(exc: BaseException, where: str, attempts: int) -> PipelineError:
    """The error that ends the worker after ``attempts`` failed attempts at one batch."""
    error = KafkaIOError if is_kafka_failure(exc) else ScoringError
    return error(f"{where} failed {attempts} times, giving up: {exc}")


def describe_batch(records: list[Any]) -> str:
    if not records:
        return "empty"
    first, last = records[0], records[-1]
    return (
        f"{len(records)} records from {first.topic}[{first.partition}] offset={first.offset}"
        f" to {last.topic}[{last.partition}] offset={last.offset}"
    )
