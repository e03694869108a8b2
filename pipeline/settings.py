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
        default="127.0.0.1:9092", min_length=1, description="comma-separated host:port list"
    )
    client_id: str = Field(default="anomaly-pipeline", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    request_timeout_ms: int = Field(default=30_000, gt=0)

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

    max_size: int = Field(default=1024, gt=0, le=1_000_000)
    max_wait_ms: int = Field(default=50, ge=0, le=60_000)


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
        default="records", min_length=1, description="topic(s) to consume, comma-separated"
    )
    input_pattern: str | None = Field(
        default=None, description="regex of topics to consume instead of input_topic"
    )
    alert_topic: str = Field(default="anomalies", min_length=1)
    dlq_topic: str = Field(default="records-dlq", min_length=1)
    scores_topic: str | None = Field(default=None, description="optional: every record's score")
    group_id: str = Field(default="anomaly-worker", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    model_store: str = Field(default="model-store", min_length=1)
    model_name: str = Field(default="default", min_length=1)
    model_version: str | None = Field(default=None, description="pin a version; LATEST if unset")
    id_field: str | None = Field(default=None, description="record field carried as record_id")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = Field(default=3, ge=0, le=100)
    include_record: bool = Field(default=False, description="copy the input record into alerts")
    max_record_bytes: int = Field(default=1_048_576, gt=0)
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="0 disables the server")
    metrics_host: str = "0.0.0.0"
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id: str | None = Field(
        default=None, description="exactly-once: stable per worker; default group_id-client_id"
    )
    reload_interval_s: float = Field(default=10.0, ge=0, description="0 disables hot reload")
    max_batch_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @property
    def input_topics(self) -> list[str]:
        return [t.strip() for t in self.input_topic.split(",") if t.strip()]


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
