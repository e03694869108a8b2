"""Reading the alert topic: filters, per-key cooldown, formatting and ``alerts tail``.

Shared by ``python -m pipeline alerts tail`` (follow the topic, print alerts) and ``python -m
pipeline alerts sink`` (``pipeline.alert_consumers.sinks``). Alert events are the JSON of
``pipeline.contract.alerts.AlertEvent``; a record on the topic that is not one is counted and
skipped, never printed as if it were.

The cooldown keeps at most one alert per entity key (the record key, else ``record_id``)
per window, measured on the alert's source timestamp so a replay suppresses the same
alerts as the live run did; the rest are counted as suppressed.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.contract.exceptions import ConfigError, KafkaIOError
from pipeline.kafka.clients import new_consumer
from pipeline.kafka.idle import IdleClock
from pipeline.kafka.settings import KafkaSettings

Event = dict[str, Any]
StartAt = Literal["end", "beginning"]
_decoder = msgspec.json.Decoder(dict[str, Any])
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now_ms: int | None = None) -> int:
    """``--since`` as epoch ms: a duration back from now (``90s``, ``15m``, ``2h``, ``1d``)
    or an ISO 8601 time (``2026-11-24T04:00:00Z``; naive times are UTC)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    m = _RELATIVE.match(text.strip())
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"--since {text!r}: expected a duration like 15m / 2h / 1d or an ISO 8601 time"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class AlertFilter:
    """Which events to keep; unset fields keep everything."""

    model: str | None = None
    version: str | None = None
    min_score: float | None = None
    since_ms: int | None = None  # on the source record's timestamp

    def __call__(self, event: Event) -> bool:
        model = event.get("model") or {}
        if self.model is not None and model.get("name") != self.model:
            return False
        if self.version is not None and model.get("version") != self.version:
            return False
        score = event.get("score", 0.0)
        if self.min_score is not None and score is not None and float(score) < self.min_score:
            return False  # a null score (not finite: reason non_finite_score) passes any bar
        if self.since_ms is not None:
            ts = (event.get("source") or {}).get("timestamp")
            if ts is not None and ts < self.since_ms:
                return False
        return True


def entity_key(event: Event) -> str | None:
    """The entity an alert is about: the record key, else its record_id."""
    key = event.get("key")
    return str(key) if key is not None else event.get("record_id")


@dataclass
class Cooldown:
    """At most one alert per entity key per ``window_s``; the rest are counted as suppressed.

    Remembers at most ``max_keys`` keys (least recently alerted dropped first), so memory
    stays bounded with many entities.
    """

    window_s: float
    max_keys: int = 1_000_000
    suppressed: int = 0
    _last: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def allow(self, event: Event) -> bool:
        key = entity_key(event)
        if key is None or self.window_s <= 0:
            return True
        ts = (event.get("source") or {}).get("timestamp")
        now = ts / 1000 if ts is not None else time.time()
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.window_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


def decode_event(value: bytes | None) -> Event | None:
    """The event, or None when the record is not an alert event."""
    try:
        event = _decoder.decode(value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event if "event_id" in event and "score" in event else None


def format_pretty(event: Event, color: bool = False) -> str:
    """One line for people: time, model, score vs threshold, entity, top features, source."""
    import click

    model = event.get("model") or {}
    src = event.get("source") or {}
    tops = ", ".join(
        f"{f['name']} {100 * f.get('share', 0.0):.0f}%" for f in event.get("top_features") or []
    )
    who = event.get("record_id") or event.get("key") or "-"
    score = "not finite" if event["score"] is None else f"{event['score']:.4g}"
    if color:
        score = click.style(score, fg="red", bold=True)
        who = click.style(str(who), bold=True)
    return (
        f"{event.get('detected_at', '')}  {model.get('name')}/{model.get('version')}  "
        f"{who}  score {score} (threshold {event.get('threshold', 0.0):.4g})  "
        f"top: {tops or '-'}  [{src.get('topic')}[{src.get('partition')}] "
        f"offset={src.get('offset')}]"
    )


@dataclass
class TailStats:
    shown: int = 0
    filtered: int = 0
    suppressed: int = 0
    invalid: int = 0


def alert_consumer(
    kafka: KafkaSettings, *, group_id: str | None = None, **extra: Any
) -> KafkaConsumer:
    """A read_committed consumer without auto-commit (transactional alerts show when committed)."""
    try:
        return new_consumer(
            **kafka.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **extra,
        )
    except KafkaError as exc:
        raise KafkaIOError(f"cannot connect to {kafka.bootstrap_servers}: {exc!r}") from exc


def assign_all(
    consumer: KafkaConsumer,
    topic: str,
    start: StartAt,
    since_ms: int | None = None,
    timeout_s: float = 30,
) -> list[TopicPartition]:
    """Assign every partition of ``topic`` and position it at the start, end or ``since_ms``."""
    deadline = time.monotonic() + timeout_s
    while not (ids := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise KafkaIOError(f"topic {topic} not found (no partitions after {timeout_s} s)")
        time.sleep(0.2)
    parts = [TopicPartition(topic, p) for p in sorted(ids)]
    consumer.assign(parts)
    if since_ms is not None:
        found = consumer.offsets_for_times(dict.fromkeys(parts, since_ms))
        ends = consumer.end_offsets(parts)
        for tp in parts:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
    elif start == "beginning":
        consumer.seek_to_beginning(*parts)
    else:
        consumer.seek_to_end(*parts)
        for tp in parts:
            consumer.position(tp)  # resolve now, so alerts produced from here on are seen
    return parts


def iter_polled(
    consumer: KafkaConsumer,
    stop: threading.Event,
    idle_timeout_s: float | None = None,
    max_records: int = 500,
) -> Iterator[list[Any]]:
    """Polled record lists until ``stop`` is set or nothing arrived for ``idle_timeout_s``
    (counted only while the consumer has partitions, ``pipeline.kafka.idle``)."""
    idle = IdleClock(idle_timeout_s)
    while not stop.is_set():
        try:
            polled = consumer.poll(timeout_ms=200, max_records=max_records)
        except KafkaError as exc:
            raise KafkaIOError(f"polling alerts failed: {exc!r}") from exc
        records = [r for recs in polled.values() for r in recs]
        if records:
            idle.activity()
            yield records
        elif idle.expired(has_partitions=bool(consumer.assignment())):
            return


def tail(
    kafka: KafkaSettings,
    topic: str,
    emit: Callable[[Event], None],
    *,
    keep: AlertFilter,
    cooldown: Cooldown | None = None,
    start: StartAt = "end",
    max_alerts: int | None = None,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> TailStats:
    """Follow ``topic`` (every partition, no consumer group) and ``emit`` kept alerts."""
    stop = stop or threading.Event()
    stats = TailStats()
    consumer = alert_consumer(kafka)
    try:
        assign_all(consumer, topic, start, keep.since_ms)
        if on_ready is not None:
            on_ready()
        for records in iter_polled(consumer, stop, idle_timeout_s):
            for rec in records:
                event = decode_event(rec.value)
                if event is None:
                    stats.invalid += 1
                elif not keep(event):
                    stats.filtered += 1
                elif cooldown is not None and not cooldown.allow(event):
                    stats.suppressed += 1
                else:
                    emit(event)
                    stats.shown += 1
                    if max_alerts is not None and stats.shown >= max_alerts:
                        return stats
    finally:
        consumer.close(autocommit=False)
    return stats
