"""Worker settings, read once at start from env vars (prefix ``PIPELINE_``) and ``.env``.

Nested groups use ``__``: ``PIPELINE_KAFKA__BOOTSTRAP_SERVERS``, ``PIPELINE_BATCH__MAX_SIZE``.
An invalid value fails at start with the field named (``load_worker_settings``). Secrets are
``SecretStr`` so they never appear in reprs or logs. Every field is documented in README.md;
the env-var diagnostics (typos, Kubernetes service links) live in ``pipeline.common.envvars``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.common.envvars import describe_validation_error
from pipeline.common.fields import Host, Regex, StoreName, Topic, Topics
from pipeline.contract.exceptions import ConfigError
from pipeline.kafka.settings import KafkaSettings


class BatchSettings(BaseModel):
    """Micro-batching: a batch closes at max_size records or max_wait_ms after its first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size: int = Field(
        default=1024, gt=0, le=1_000_000, description="Most records in one micro-batch."
    )
    max_wait_ms: int = Field(
        default=50,
        ge=0,
        le=60_000,
        description="Longest a record waits for its batch to fill, from the batch's first record.",
    )


class WorkerSettings(BaseSettings):
    """Everything the streaming worker needs; see README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    input_topic: Topics = Field(
        default="records", min_length=1, description="Topic(s) to consume, comma-separated."
    )
    input_pattern: Regex | None = Field(
        default=None, description="Regex of topics to consume instead of input_topic."
    )
    alert_topic: Topic = Field(
        default="anomalies", min_length=1, description="Where anomaly events go."
    )
    dlq_topic: Topic = Field(
        default="records-dlq", min_length=1, description="Where records that fail decoding go."
    )
    scores_topic: Topic | None = Field(
        default=None, description="Optional: every record's score event (audit, analytics)."
    )
    group_id: str = Field(
        default="anomaly-worker", min_length=1, description="Consumer group of the workers."
    )
    session_timeout_ms: int = Field(
        default=45_000,
        ge=6_000,
        le=1_800_000,
        description="How long the group waits for a silent member (a crashed worker) before"
        " its partitions move to the others.",
    )
    start_from: Literal["latest", "earliest", "timestamp"] = Field(
        default="latest",
        description="Where a new consumer group starts on partitions it never committed: latest"
        " (records arriving from now on: a first deployment does not alert on old history),"
        " earliest (all retained records) or timestamp (PIPELINE_START_TIMESTAMP_MS). The start"
        " is committed at once, so a restart continues from it, never from a new latest.",
    )
    start_timestamp_ms: int | None = Field(
        default=None,
        ge=0,
        description="With start_from=timestamp: epoch milliseconds; a new group starts at the"
        " first record at or after it (at the end where there is none).",
    )
    create_topics: bool = Field(default=True, description="Create missing output topics at start.")
    topic_partitions: int = Field(default=3, ge=1, description="Partitions of created topics.")
    topic_replication: int | None = Field(
        default=None,
        ge=1,
        description="Replication factor of created topics; unset: min(3, brokers in the cluster).",
    )
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of created topics; unset: replication factor - 1 (at"
        " least 1), so acks=all writes survive the loss of one broker.",
    )
    model_store: str = Field(
        default="model-store",
        min_length=1,
        description="Model store: a directory, or an fsspec URL (s3://bucket/prefix, gs://, "
        "az://, file://) with credentials from that store's usual environment (AWS_* for s3).",
    )
    model_name: StoreName = Field(
        default="default", min_length=1, description="Model name inside the store."
    )
    model_version: StoreName | None = Field(
        default=None, description="Pin a version (disables hot reload); LATEST when unset."
    )
    id_field: str | None = Field(
        default=None, description="Record field carried into alerts as record_id."
    )
    entity_from: Literal["field", "key"] = Field(
        default="field",
        description="Per-entity models: a record's entity is its field named like the model's "
        "entity column (or PIPELINE_ENTITY_FIELD), or its Kafka key. Binary records always use "
        "the key. No entity, or one without a model: the fallback scores it.",
    )
    entity_field: str | None = Field(
        default=None,
        min_length=1,
        description="Per-entity models: the record field naming the entity, when it differs "
        "from the training data's entity column.",
    )
    entity_memory_mb: float = Field(
        default=256.0,
        gt=0,
        description="Per-entity models: most weights resident on the scoring device per served "
        "model; models are loaded on demand and the least recently used evicted.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs; auto = CUDA when present."
    )
    torch_threads: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="CPU threads per model call; 0 = torch's default. 1 leaves the other "
        "cores to Kafka I/O and decoding; more threads spun against them (BENCHMARKS.md).",
    )
    top_k: int = Field(
        default=3, ge=0, le=100, description="Features with the largest error in each alert."
    )
    include_record: bool = Field(
        default=False, description="Copy the input record into each alert."
    )
    max_record_bytes: int = Field(
        default=1_048_576, gt=0, description="Larger records are dead-lettered as oversized."
    )
    metrics_port: int = Field(
        default=9108,
        ge=0,
        le=65535,
        description="Port of /metrics, /healthz, /readyz; 0 disables the server.",
    )
    metrics_host: Host = Field(default="0.0.0.0", description="Interface of the metrics server.")
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        default="at-least-once", description="Delivery guarantee (README: Delivery)."
    )
    transactional_id: str | None = Field(
        default=None,
        description=(
            "exactly-once: id unique to this replica and stable across its restarts (e.g. a"
            " StatefulSet pod name); default group_id-hostname-N, N the lowest slot no live"
            " worker on this host holds (a restart gets its predecessor's id back)."
        ),
    )
    transaction_timeout_ms: int = Field(
        default=60_000,
        ge=1_000,
        le=900_000,
        description=(
            "exactly-once: the coordinator aborts a transaction open this long (and fences"
            " its producer; the worker then replaces the producer and reads on from the"
            " committed offsets); also the deadline of every transactional call. At most the"
            " brokers' transaction.max.timeout.ms (15 min by default)."
        ),
    )
    reload_interval_s: float = Field(
        default=10.0, ge=0, description="How often to check LATEST for a new model; 0 disables."
    )
    drift_half_life_records: int = Field(
        default=20_000,
        gt=0,
        description="Drift window: a record's weight halves after this many newer records.",
    )
    announce_topic: Topic | None = Field(
        default=None,
        description="Optional: topic where the trainer announces versions; LATEST is read at once.",
    )
    shadow_model_name: StoreName | None = Field(
        default=None,
        description="Shadow scoring: candidate model scored beside the live one (metrics only).",
    )
    shadow_model_version: StoreName | None = Field(
        default=None,
        description="Pin the shadow version; LATEST of the shadow name (hot reload) when unset.",
    )
    shadow_topic: Topic | None = Field(
        default=None, description="Optional: the shadow model's score event for every record."
    )
    liveness_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="/healthz fails when the loop has not gone round for this long.",
    )
    max_batch_retries: int = Field(
        default=5, ge=0, description="Failed attempts of one batch before the worker exits."
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per attempt, capped at 30 s."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one object per line; text: for people."
    )

    @model_validator(mode="after")
    def _start_complete(self) -> WorkerSettings:
        if self.start_from == "timestamp" and self.start_timestamp_ms is None:
            raise ValueError("PIPELINE_START_FROM=timestamp needs PIPELINE_START_TIMESTAMP_MS")
        return self

    @model_validator(mode="after")
    def _shadow_complete(self) -> WorkerSettings:
        if self.shadow_topic and not self.shadow_enabled:
            raise ValueError("shadow_topic needs shadow_model_name or shadow_model_version")
        same_name = self.shadow_enabled and self.shadow_name == self.model_name
        if same_name and self.shadow_model_version is None:
            raise ValueError(
                "a shadow of the live model's own name needs shadow_model_version"
                " (following the same LATEST it would just repeat the live model)"
            )
        return self

    @property
    def input_topics(self) -> list[str]:
        return [t.strip() for t in self.input_topic.split(",") if t.strip()]

    @property
    def output_topics(self) -> list[str]:
        """The topics the worker writes to (created at start with ``create_topics``)."""
        outputs = [self.alert_topic, self.dlq_topic, self.scores_topic, self.shadow_topic]
        return [t for t in outputs if t]

    @property
    def shadow_enabled(self) -> bool:
        return bool(self.shadow_model_name or self.shadow_model_version)

    @property
    def shadow_name(self) -> str:
        """The shadow's model name: a version alone names a candidate of the live model."""
        return self.shadow_model_name or self.model_name


# Settings that existed once and were taken out: a deployment still setting one must hear
# that it no longer does anything, at start, rather than have the value silently ignored.
REMOVED = {
    "overlap_compute": "removed: polling the next batch while the model scored this one read "
    "the group generation at commit time after a rebalance, which broke exactly-once fencing "
    "(and never paid on the measured machines); unset it",
}


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Build settings once at start; a bad value raises ConfigError naming the env var, and
    so does a removed setting still set (``REMOVED``)."""
    for field, why in REMOVED.items():
        env = f"PIPELINE_{field.upper()}"
        if env in os.environ or field in overrides:
            raise ConfigError(f"invalid settings: {env} ({field}) was {why}")
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "PIPELINE_", WorkerSettings)) from exc
