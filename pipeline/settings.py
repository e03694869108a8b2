"""Worker settings, read once at start from env vars (prefix ``PIPELINE_``) and ``.env``.

Nested groups use ``__``: ``PIPELINE_KAFKA__BOOTSTRAP_SERVERS``, ``PIPELINE_BATCH__MAX_SIZE``.
An invalid value fails at start with the field named (``load_worker_settings``). Secrets are
``SecretStr`` so they never appear in reprs or logs. Every field is documented in README.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.exceptions import ConfigError
from pipeline.logs import register_secret

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$"
)


def _topic(name: str) -> str:
    """Kafka's own rule; a bad name would otherwise fail only at the first batch."""
    if not _TOPIC_RE.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")
    return name


def _topics(value: str) -> str:
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise ValueError("no topic named")
    for name in names:
        _topic(name)
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


def _store_name(value: str) -> str:
    """A model name or version is a directory in the store: no path tricks."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} must be 1-128 of A-Z a-z 0-9 . _ - (not starting with . - _)")
    return value


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


def _bootstrap(value: str) -> str:
    for server in (s.strip() for s in value.split(",")):
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{server!r} is not host:port")
        _host(host.strip("[]"))
    return value


Topic = Annotated[str, AfterValidator(_topic)]
Topics = Annotated[str, AfterValidator(_topics)]
StoreName = Annotated[str, AfterValidator(_store_name)]
Host = Annotated[str, AfterValidator(_host)]


class KafkaSettings(BaseModel):
    """Connection to the Kafka cluster (shared by the worker, alert tools and the trainer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: Annotated[str, AfterValidator(_bootstrap)] = Field(
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
    ssl_cafile: FilePath | None = Field(default=None, description="CA bundle to verify brokers.")
    ssl_certfile: FilePath | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: FilePath | None = Field(default=None, description="Client private key (mTLS).")
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

    reconnect_backoff_max_ms: int = Field(
        default=1_000,
        gt=0,
        description="Longest pause between attempts to reach a broker that is down (the Java"
        " client's default; kafka-python's own 30 s delays recovery after a broker restart).",
    )

    @model_validator(mode="after")
    def _register_secrets(self) -> KafkaSettings:
        """Log lines mask these values wherever a library prints them (pipeline.logs)."""
        for secret in (self.sasl_password, self.ssl_password):
            if secret is not None:
                register_secret(secret.get_secret_value())
        return self

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
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
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
    input_topic: Topics = Field(
        default="records", min_length=1, description="Topic(s) to consume, comma-separated."
    )
    input_pattern: Annotated[str, AfterValidator(_regex)] | None = Field(
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
    model_name: StoreName = Field(
        default="default", min_length=1, description="Model name inside the store."
    )
    model_version: StoreName | None = Field(
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
        raise ConfigError(describe_validation_error(exc, "PIPELINE_", WorkerSettings)) from exc


def describe_validation_error(
    exc: ValidationError, prefix: str, settings_cls: type[BaseModel] | None = None
) -> str:
    """One line per bad field, named as the env var an operator would set."""
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        if path and path[0].upper().startswith(prefix):  # a dotenv key is reported raw
            path[0] = path[0][len(prefix) :]
        env = prefix + "__".join(p.upper() for p in path)
        if err["type"] == "extra_forbidden":
            hint = _suggest(env, settings_cls, prefix) if settings_cls else ""
            lines.append(f"{env}: not a setting{hint}")
            continue
        shown = _shown(path, err.get("input"))
        lines.append(f"{env} ({'.'.join(path).lower()}): {err['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(lines)


# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_9108_TCP, ... for every Service in
# the namespace (a Service named "pipeline" gives PIPELINE_PORT): never our settings.
_SERVICE_LINK = re.compile(
    r"_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$"
)


def env_names(settings_cls: type[BaseModel], prefix: str) -> list[str]:
    """Every env var a settings class reads, nested groups joined with ``__``."""
    names: list[str] = []
    for name, info in settings_cls.model_fields.items():
        env = prefix + name.upper()
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names += env_names(nested, env + "__")
        else:
            names.append(env)
    return names


def unknown_env(
    environ: Mapping[str, str], prefix: str, settings_cls: type[BaseModel]
) -> list[str]:
    """Env vars with our prefix that name no setting (typos), each with a suggestion.

    They are warned about, not refused: the environment is shared (Kubernetes service links,
    CI systems that use PIPELINE_* themselves). Misspelt nested names (PIPELINE_KAFKA__...)
    and unknown keys in .env do fail: those namespaces are ours alone."""
    known = set(env_names(settings_cls, prefix))
    out = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known or "__" in name:
            continue
        if _SERVICE_LINK.search(name) and not name.endswith(("_MS", "_S")):
            continue
        out.append(f"{name} is not a setting{_suggest(name, settings_cls, prefix)}; ignored")
    return out


def _suggest(name: str, settings_cls: type[BaseModel] | None, prefix: str) -> str:
    if settings_cls is None:
        return ""
    close = difflib.get_close_matches(name, env_names(settings_cls, prefix), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _shown(path: list[str], value: Any) -> str:
    """The offending value, unless it is or may contain a secret."""
    if any("password" in p for p in path):
        return "***"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(str(k) for k in value)) + "}"
    return repr(value)
