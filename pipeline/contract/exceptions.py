"""One exception tree for the whole project, so callers can catch at the right level.

    PipelineError
    ├── ConfigError            a setting is invalid; raised at start, names the field
    ├── FeatureSpecError       a feature spec is inconsistent or does not fit the data
    ├── ArtifactError          a model artifact cannot be used
    │   ├── ArtifactNotFound   no such model / version in the store
    │   └── ArtifactInvalid    present but refused (checksum, format, shapes, smoke batch)
    ├── DataError              training / scoring input cannot be read or is unusable
    ├── ScoringError           the model failed on a batch
    └── KafkaIOError           talking to Kafka failed
        ├── DeliveryError      a produced record was not acknowledged
        │   ├── OutputTooLarge the producer refused one record as over its size limit
    │   └── TransactionStalled a transactional call did not finish within its deadline
        ├── CommitRejected     the group moved on (rebalance): offsets not committed
        ├── KafkaFatalError    retrying cannot help (auth, fenced producer, ...): stop
        └── AnnounceError      a model was published but its announcement was not sent

Library errors (kafka-python, torch, pyarrow) are wrapped at the boundary with
``raise X(...) from exc`` so the message carries our context (file, topic, field).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A setting is invalid; the message names the field."""


class FeatureSpecError(PipelineError):
    """A feature spec is inconsistent, or does not match the data or the model."""


class ArtifactError(PipelineError):
    """A model artifact cannot be used."""


class ArtifactNotFound(ArtifactError):
    """The model store has no such model or version."""


class ArtifactInvalid(ArtifactError):
    """The artifact exists but is refused: checksum, format, shapes or smoke batch."""


class StoreUnavailable(ArtifactError):
    """The model store cannot be read or written now (unreachable, credentials refused); says
    which store and what was being done. Not a verdict on a version: a reload tries again."""


class DataError(PipelineError):
    """Input data (Parquet, records) cannot be read or is unusable; names the file or column."""


class ScoringError(PipelineError):
    """The model failed on a batch."""


class KafkaIOError(PipelineError):
    """Talking to Kafka failed."""


class DeliveryError(KafkaIOError):
    """A produced record was not acknowledged by the broker."""


class OutputTooLarge(DeliveryError):
    """The producer refused one output record before sending it: over ``max_request_size``.

    Nothing was queued, so the batch (and its transaction) is intact: the worker dead-letters
    the record whose output it was (reason ``output_too_large``) instead of failing the batch,
    which would meet the same record on every retry and restart."""


class TransactionStalled(DeliveryError):
    """A transactional call (commit, abort, sending the offsets) did not finish within its
    deadline (the transaction timeout): the exactly-once worker replaces its producer and
    reads on from the committed offsets (``pipeline.worker.recovery``)."""


class CommitRejected(KafkaIOError):
    """The group rebalanced while a batch was processed; its offsets were not committed.

    The output is durable; the partitions' new owner replays from the last commit."""


class KafkaFatalError(KafkaIOError):
    """Kafka refused in a way retries cannot fix: authentication or authorization, a fenced
    transactional producer, an unsupported broker, a bad client configuration."""


class AnnounceError(KafkaIOError):
    """The model was published, but announcing it on Kafka failed; workers still find it
    at their next poll of LATEST. Carries the published version."""

    def __init__(self, message: str, version: str) -> None:
        super().__init__(message)
        self.version = version
