"""The alert event contract: its schema (pydantic, exported as JSON Schema) and a fast builder.

``AlertEvent`` is the single source of truth for the shape;
``pipeline/contract/schemas/alert.schema.json`` is generated from it (``python -m pipeline
schema alert``) and a test keeps the file in sync. The worker builds events as plain dicts with
``build_event`` because it may emit one per record on the scores topic; tests validate every
emitted event against the schema.

The event id is a UUIDv5 of the source coordinates and the record's timestamp, so a record
replayed after a crash gets the same id and consumers can drop duplicates, while a record at
the same offset of a recreated topic (another incarnation) gets a new one.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from pipeline.contract.bounds import MAX_ID_CHARS, bounded_text, key_text
from pipeline.contract.verdict import NON_FINITE_SCORE, AnomalyReason, anomaly_reason

SCHEMA_VERSION = 1
EVENT_NAMESPACE = uuid.UUID("6f1c2d1e-7a43-4d5e-9a51-2b0f3c9e8d10")
_encoder = msgspec.json.Encoder()


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    entity: str | None = Field(
        default=None,
        description="per-entity versions: the entity whose own model scored the record "
        "(null when the fallback did)",
    )
    fallback: bool | None = Field(
        default=None,
        description="per-entity versions: true when the fallback model scored the record "
        "(its entity is unknown, has too few training rows, or the record names none); "
        "absent for single-model versions",
    )


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp: int | None = Field(description="record timestamp, ms since the epoch")


class TopFeature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="feature (or vector element 'name[i]') with a large error")
    error: float | None = Field(
        ge=0, description="its reconstruction error; null when it is not finite (overflow)"
    )
    share: float = Field(ge=0, le=1, description="its fraction of the record's total error")


class AlertEvent(BaseModel):
    """One scored record; on the alert topic only those with is_anomaly=true."""

    model_config = ConfigDict(extra="forbid", title="AlertEvent")

    schema_version: Literal[1] = 1
    event_id: str = Field(
        description="UUIDv5 of topic/partition/offset/timestamp: stable across replays, new "
        "for a record of a recreated topic"
    )
    type: Literal["anomaly", "score"]
    record_id: str | None = Field(
        description="value of the configured id field, if any; at most 1,024 characters "
        "(truncated.record_id holds the length of a longer one)"
    )
    key: str | None = Field(
        description="Kafka key of the input record (UTF-8, else hex); at most 4,096 characters "
        "(truncated.key holds the size in bytes of a longer key)"
    )
    score: float | None = Field(
        ge=0,
        description="the record's score; null when the model's score is not a finite number "
        "(NaN or infinity: JSON has neither), which makes the record an anomaly",
    )
    threshold: float
    is_anomaly: bool
    reason: AnomalyReason | None = Field(
        default=None,
        description="why is_anomaly is true: over_threshold (score > threshold), or "
        "non_finite_score (the model could not compute a finite score, e.g. values near the "
        "float32 limit overflowed); null for a normal record",
    )
    model: ModelRef
    source: SourceRef
    top_features: list[TopFeature]
    detected_at: str = Field(description="RFC 3339 UTC time the worker scored the record")
    record: dict[str, Any] | None = Field(
        default=None, description="the input record, when include_record is on"
    )
    truncated: dict[Literal["key", "record_id", "record"], int] | None = Field(
        default=None,
        description="fields cut to their bound (pipeline.contract.bounds), each with its "
        "original size: key (bytes), record_id (characters), record (bytes; record is then "
        "null); absent when nothing was cut",
    )


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def event_id(topic: str, partition: int, offset: int, timestamp: int | None) -> str:
    """Deterministic id of a record: ``uuid5(EVENT_NAMESPACE, "topic/partition/offset/ts")``.

    A replay reads the same record, timestamp included (it is stored in the log), so it gets
    the same id. A topic deleted and created again restarts its offsets at 0; the timestamp
    tells its records from the old incarnation's, which the file sinks would otherwise drop
    as duplicates. (The topic id would too, but kafka-python's records do not carry it.) A
    record without a timestamp (pre-0.10 format) is named by ``-``.

    Computed by hand (RFC 4122 section 4.3) because ``uuid.uuid5`` builds two UUID objects
    per call and this runs for every record on the scores topic; a test checks the result
    equals ``uuid.uuid5``.
    """
    digest = hashlib.sha1(  # UUIDv5 is defined on SHA-1; not used for security
        _NAMESPACE_BYTES + f"{topic}/{partition}/{offset}/{_stamp(timestamp)}".encode(),
        usedforsecurity=False,
    ).digest()
    b = bytearray(digest[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _stamp(timestamp: int | None) -> str:
    return "-" if timestamp is None else str(timestamp)


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_key(key: bytes | None) -> str | None:
    """A Kafka key as text: UTF-8, or hex when it is not text (alerts, binary records' ids)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()


def build_event(
    *,
    source: tuple[str, int, int, int | None],
    key: bytes | None,
    record_id: str | None,
    score: float,
    threshold: float,
    model: tuple[str, str],
    top_features: list[tuple[str, float]],
    total_error: float,
    detected_at: str,
    record: dict[str, Any] | None = None,
    entity: tuple[str | None] | None = None,
    record_cut: int | None = None,
) -> dict[str, Any]:
    """The event as a dict matching AlertEvent (kept cheap: it may run for every record).

    ``entity``: for a per-entity version, ``(entity,)`` whose model scored the record, or
    ``(None,)`` when the fallback did; None for a single model. ``record_cut``: the size of
    a record too large to copy (``record`` is then None). Key and id are cut to their bounds
    here, so no input can make an event too large to send."""
    topic, partition, offset, timestamp = source
    reason = anomaly_reason(score, threshold)  # the one rule (pipeline.contract.verdict)
    is_anomaly = reason is not None
    key_str, key_cut = key_text(key)
    record_id, id_cut = bounded_text(record_id, MAX_ID_CHARS)
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(topic, partition, offset, timestamp),
        "type": "anomaly" if is_anomaly else "score",
        "record_id": record_id,
        "key": key_str,
        "score": None if reason == NON_FINITE_SCORE else score,
        "threshold": threshold,
        "is_anomaly": is_anomaly,
        "reason": reason,
        "model": (
            {"name": model[0], "version": model[1]}
            if entity is None
            else {
                "name": model[0],
                "version": model[1],
                "entity": entity[0],
                "fallback": entity[0] is None,
            }
        ),
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
        },
        "top_features": (
            _overflowed_features(top_features)
            if reason == NON_FINITE_SCORE
            else _shared_features(top_features, total_error)
        ),
        "detected_at": detected_at,
    }
    if record is not None:
        event["record"] = record
    if key_cut is not None or id_cut is not None or record_cut is not None:
        event["truncated"] = _cuts(key_cut, id_cut, record_cut)
    return event


def _cuts(key: int | None, record_id: int | None, record: int | None) -> dict[str, int]:
    """The ``truncated`` field: original sizes of the fields that were cut."""
    named = {"key": key, "record_id": record_id, "record": record}
    return {name: size for name, size in named.items() if size is not None}


def _shared_features(
    top_features: list[tuple[str, float]], total_error: float
) -> list[dict[str, Any]]:
    """Top features with each one's share of the record's (finite) total error."""
    return [
        {"name": n, "error": e, "share": min(1.0, e / total_error) if total_error > 0 else 0.0}
        for n, e in top_features
    ]


def _overflowed_features(top_features: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Top features of a record whose score is not finite: a feature whose error is not
    finite either has it all (share 1, error null as JSON has no NaN), a finite one shares
    nothing of an infinite total."""
    return [
        {"name": n, "error": e, "share": 0.0}
        if math.isfinite(e)
        else {"name": n, "error": None, "share": 1.0}
        for n, e in top_features
    ]


def encode_event(event: dict[str, Any]) -> bytes:
    return _encoder.encode(event)


def alert_json_schema() -> dict[str, Any]:
    schema = AlertEvent.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/anomaly-pipeline/schemas/alert.schema.json"
    return schema
