"""Structured logging: one JSON object per line (or plain text for people at a terminal).

Call sites pass context with ``extra={...}``; every extra key becomes a JSON field. Secrets
should never reach here: settings hold them as SecretStr and only ``client_kwargs`` reveals
them, to kafka-python. That library can log its whole configuration at DEBUG (the admin client
does, password included), so as a second line of defence every secret value the settings hold
is registered here (``register_secret``) and masked as ``***`` in every formatted line, as are
extra fields whose name contains "password" or "secret".
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_encoder = msgspec.json.Encoder(enc_hook=repr)
_SECRETS: set[str] = set()
_SECRET_KEYS = ("password", "secret")
MASK = "***"


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line (settings call this): as is, as
    Python's repr shows it inside a dict, and JSON-escaped (our JSON lines)."""
    if not value or len(value) < 3:  # masking "a" would garble every line
        return
    as_repr = repr(value)[1:-1]
    for form in (value, as_repr):
        _SECRETS.add(form)
        _SECRETS.add(_encoder.encode(form).decode()[1:-1])


def redact(text: str) -> str:
    """``text`` with every registered secret masked (longest forms first)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out = {}
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            secret = any(word in key.lower() for word in _SECRET_KEYS)
            out[key] = MASK if secret and value is not None else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(_encoder.encode(out).decode())


class TextFormatter(logging.Formatter):
    """Human-readable lines with the structured fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in _extras(record).items()]
        return redact(f"{line} {' '.join(extras)}" if extras else line)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger to stderr; quiet the chatty internals of kafka-python and httpx."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty; httpx logs every request's full URL at INFO (a webhook's URL
    # can be its credential: masked anyway, see register_secret, but not worth a line each)
    for name in ("kafka", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
