"""Worker settings, read once at start from env vars (prefix ``PIPELINE_``) and ``.env``.

Nested groups use ``__``: ``PIPELINE_KAFKA__BOOTSTRAP_SERVERS``, ``PIPELINE_BATCH__MAX_SIZE``.
An invalid value fails at start with the field named (``load_worker_settings``). Secrets are
``SecretStr`` so they never appear in reprs or logs. Every field is documented in README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.exceptions import ConfigError


class KafkaSettings(BaseModel):
    """Connection to the Kafka cluster (shared by the worker, alert tools and the trainer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", min_length=1, description="Comma-separated host:port list."
    )
    client_id: str = Field(
        default="anomaly-pipeline", min_length=1, description="Client id shown in broker logs."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How to talk to the brokers."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="Required with SASL_* protocols."
    )
    sasl_username: str | None = Field(default=None, description="SASL user.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (secret: never logged)."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (mTLS).")
    ssl_password: SecretStr | None = Field(
        default=None, description="Password of the client key (secret)."
    )
    request_timeout_ms: int = Field(
        default=30_000, gt=0, description="Timeout of one request to a broker."
    )
    bootstrap_timeout_ms: int = Field(
        default=30_000,
        gt=0,
        description="How long a client tries to reach a first broker (wrong SASL credentials"
        " also end in this timeout).",
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError("sasl_mechanism is required when security_protocol is SASL_*")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("sasl_username and sasl_password are required for SASL")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients; the only place secrets are revealed."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = str(value)
        if self.ssl_password is not None:
            kwargs["ssl_password"] = self.ssl_password.get_secret_value()
        return kwargs


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
    input_topic: str = Field(
        default="records", min_length=1, description="Topic(s) to consume, comma-separated."
    )
    input_pattern: str | None = Field(
        default=None, description="Regex of topics to consume instead of input_topic."
    )
    alert_topic: str = Field(
        default="anomalies", min_length=1, description="Where anomaly events go."
    )
    dlq_topic: str = Field(
        default="records-dlq", min_length=1, description="Where records that fail decoding go."
    )
    scores_topic: str | None = Field(
        default=None, description="Optional: every record's score event (audit, analytics)."
    )
    group_id: str = Field(
        default="anomaly-worker", min_length=1, description="Consumer group of the workers."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new group starts reading."
    )
    create_topics: bool = Field(default=True, description="Create missing output topics at start.")
    topic_partitions: int = Field(default=3, ge=1, description="Partitions of created topics.")
    topic_replication: int = Field(
        default=1, ge=1, description="Replication factor of created topics."
    )
    model_store: str = Field(
        default="model-store", min_length=1, description="Directory of the model store."
    )
    model_name: str = Field(
        default="default", min_length=1, description="Model name inside the store."
    )
    model_version: str | None = Field(
        default=None, description="Pin a version (disables hot reload); LATEST when unset."
    )
    id_field: str | None = Field(
        default=None, description="Record field carried into alerts as record_id."
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
    overlap_compute: bool = Field(
        default=False,
        description="Experimental: poll the next batch while the model scores this one (when "
        "it takes over 2 ms a batch). Did not pay on 2 busy CPU cores; a rebalance during the "
        "overlap can stall kafka-python's group join (README: Throughput).",
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
    metrics_host: str = Field(default="0.0.0.0", description="Interface of the metrics server.")
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        default="at-least-once", description="Delivery guarantee (README: Delivery)."
    )
    transactional_id: str | None = Field(
        default=None,
        description=(
            "exactly-once: id unique to this replica and stable across its restarts (e.g. the"
            " pod name); default group_id-hostname-pid."
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
    announce_topic: str | None = Field(
        default=None,
        description="Optional: topic where the trainer announces versions; LATEST is read at once.",
    )
    shadow_model_name: str | None = Field(
        default=None,
        description="Shadow scoring: candidate model scored beside the live one (metrics only).",
    )
    shadow_model_version: str | None = Field(
        default=None,
        description="Pin the shadow version; LATEST of the shadow name (hot reload) when unset.",
    )
    shadow_topic: str | None = Field(
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
    def shadow_enabled(self) -> bool:
        return bool(self.shadow_model_name or self.shadow_model_version)

    @property
    def shadow_name(self) -> str:
        """The shadow's model name: a version alone names a candidate of the live model."""
        return self.shadow_model_name or self.model_name


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Build settings once at start; a bad value raises ConfigError naming the env var."""
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="PIPELINE_")) from exc


def describe_validation_error(exc: ValidationError, prefix: str) -> str:
    """One line per bad field, named as the env var an operator would set."""
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        env = prefix + "__".join(p.upper() for p in path)
        shown = _shown(path, err.get("input"))
        lines.append(f"{env} ({'.'.join(path)}): {err['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _shown(path: list[str], value: Any) -> str:
    """The offending value, unless it is or may contain a secret."""
    if any("password" in p for p in path):
        return "***"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(str(k) for k in value)) + "}"
    return repr(value)
