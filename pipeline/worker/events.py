"""Scored records to alert and score events on a sink: the one place events are built.

The live model sends an alert per record over its threshold and, with a scores topic, a score
event per record; the shadow model sends only score events to its own topic. Both go through
``emit_events`` so an event looks the same whoever scored it. Per-record work is kept to
building one dict and one send: arrays are turned into Python lists once per batch, not
indexed element by element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from pipeline.contract.alerts import build_event, encode_event, utc_now_iso
from pipeline.contract.bounds import MAX_RECORD_COPY_BYTES, bounded_key
from pipeline.contract.entity_scoring import RoutedScores
from pipeline.contract.exceptions import OutputTooLarge
from pipeline.worker.codec import DecodedBatch
from pipeline.worker.serving import ModelHandle

Headers = list[tuple[str, bytes]]


class Sink(Protocol):
    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None: ...


@dataclass(frozen=True)
class EventTopics:
    """Where a model's events go: alerts (over the threshold) and/or every record's score."""

    alerts: str | None
    scores: str | None
    include_record: bool = False  # copy the input record into alerts


@dataclass(frozen=True)
class TooLarge:
    """A record whose event the producer refused as too large: it is dead-lettered instead."""

    index: int  # position in the batch's records
    topic: str
    detail: str


@dataclass
class Emitted:
    """What ``emit_events`` did: records over their threshold, and records whose events
    could not be sent at all (each one dead-lettered by the caller, reason output_too_large)."""

    anomalies: int = 0
    too_large: list[TooLarge] = field(default_factory=list)


def emit_events(
    records: list[Any],
    decoded: DecodedBatch,
    scored: RoutedScores,
    model: ModelHandle,
    sink: Sink,
    topics: EventTopics,
) -> Emitted:
    """Send the batch's events; says how many records were over their threshold and which
    records' events the producer refused as too large."""
    scores = scored.scores
    over = scored.is_anomaly
    out = Emitted(anomalies=int(over.sum()))
    if topics.scores:
        rows = np.arange(len(scores))
    elif topics.alerts:
        rows = np.flatnonzero(over)
    else:
        return out
    if not rows.size:
        return out
    detected_at = utc_now_iso()
    names = model.spec.unit_names
    n_units = model.spec.n_units
    ref = (model.name, model.version)
    accepted, record_ids = decoded.accepted, decoded.record_ids
    entities = _entity_refs(scored, model, rows)
    for j, score, threshold, anomalous, top_idx, top_err, entity in zip(
        rows.tolist(),
        scores.scores[rows].tolist(),
        scored.thresholds[rows].tolist(),
        over[rows].tolist(),
        scores.top_index[rows].tolist(),
        scores.top_error[rows].tolist(),
        entities,
        strict=True,
    ):
        rec = records[accepted[j]]
        copy, copy_cut = (
            record_copy(rec.value)
            if topics.include_record and anomalous and topics.alerts
            else (None, None)
        )
        event = build_event(
            source=(rec.topic, rec.partition, rec.offset, rec.timestamp),
            key=rec.key,
            record_id=record_ids[j],
            score=score,
            threshold=threshold,
            model=ref,
            top_features=[(names[u], e) for u, e in zip(top_idx, top_err, strict=True)],
            total_error=score * n_units,
            detected_at=detected_at,
            record=copy,
            entity=entity,
            record_cut=copy_cut,
        )
        targets = [topics.alerts] if anomalous and topics.alerts else []
        refused = _send(sink, [*targets, topics.scores], encode_event(event), bounded_key(rec.key))
        if refused is not None:
            out.too_large.append(TooLarge(accepted[j], *refused))
    return out


def _send(
    sink: Sink, targets: list[str | None], payload: bytes, key: bytes | None
) -> tuple[str, str] | None:
    """Send one event to each target topic; (topic, why) when the producer refused it as too
    large (the record's remaining sends are skipped: they carry the same payload)."""
    for topic in targets:
        if topic is None:
            continue
        try:
            sink.send(topic, payload, key=key)
        except OutputTooLarge as exc:
            return topic, str(exc)
    return None


def _entity_refs(
    scored: RoutedScores, model: ModelHandle, rows: npt.NDArray[np.int64]
) -> list[tuple[str | None] | None]:
    """Per event row: ``(entity,)`` whose model scored it (``(None,)``: the fallback), or
    None for a single model's events."""
    if scored.slots is None or model.entities is None:
        return [None] * len(rows)
    names = model.entities.entities.index.entities
    return [(names[s],) for s in scored.slots[rows].tolist()]


def record_copy(value: bytes | None) -> tuple[dict[str, Any] | None, int | None]:
    """(the input record for an alert, its size when it was too large to copy).

    The record is None when it is not a JSON object (binary path), is larger than
    MAX_RECORD_COPY_BYTES (the alert would not fit a 1 MiB request: its size is returned, for
    the event's ``truncated.record``), or cannot be copied (the decoder skips ignored fields
    unchecked, so a scored record can hold invalid UTF-8 or deep nesting there)."""
    if value is not None and len(value) > MAX_RECORD_COPY_BYTES:
        return None, len(value)
    try:
        obj = msgspec.json.decode(value or b"")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, None
    return (obj if isinstance(obj, dict) else None), None
