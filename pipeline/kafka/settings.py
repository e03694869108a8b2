"""Connection to the Kafka cluster: one settings group shared by the worker, the alert
consumers and the trainer's announcement (``PIPELINE_KAFKA__*`` / ``TRAINER_KAFKA__*``).

Secrets are ``SecretStr``; ``client_kwargs`` is the only place they are revealed, to
kafka-python, and every secret is registered with ``pipeline.common.logs`` so a library that
logs its configuration cannot leak it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

from pipeline.common.fields import Bootstrap
from pipeline.common.logs import register_secret


class KafkaSettings(BaseModel):
    """Connection to the Kafka cluster (shared by the worker, alert tools and the trainer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: Bootstrap = Field(
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
        """Log lines mask these values wherever a library prints them (pipeline.common.logs)."""
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
