"""``alerts sink``: a consumer group that copies alerts to a JSONL file, Parquet or a webhook
(``webhook.py``).

The pattern every alert consumer should follow (``examples/alert_consumer.py`` is the short
version of it):

1. its own consumer group, ``isolation_level=read_committed`` (alerts of an exactly-once
   worker become visible when its transaction commits), no auto-commit;
2. write a polled batch to the sink, make it durable, and only then commit the offsets; a
   crash in between replays the batch, so
3. drop duplicates by ``event_id`` (stable across worker replays too). The file sinks seed
   the seen-id set from what they already hold; the webhook sends ``Idempotency-Key:
   <event_id>`` so the receiver can drop what a restarted sink posts again.

A sink that cannot write (disk, HTTP after retries) raises ``SinkError``: nothing is
committed and a restart resumes from the last committed batch. An alert the webhook refuses
(a 4xx, a redirect it will not follow) is not a failure to write: it goes to the dead-letter
file (``refused.py``) with the reason, and counts as ``dead_lettered``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from kafka.errors import KafkaError

from pipeline.alert_consumers.tail import (
    AlertFilter,
    Cooldown,
    Event,
    alert_consumer,
    decode_event,
    iter_polled,
)
from pipeline.contract.exceptions import KafkaIOError, PipelineError
from pipeline.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


class SinkError(PipelineError):
    """The sink could not store a batch; its offsets stay uncommitted."""


class AlertSink(Protocol):
    def existing_ids(self) -> Iterable[str]:
        """Event ids the sink already holds (seeds deduplication after a restart)."""
        ...

    def write(self, events: list[Event]) -> int:
        """Store ``events`` durably or raise SinkError; return how many of them were set aside
        durably instead (a webhook's dead-letter file), 0 for a sink that refuses nothing."""
        ...

    def close(self) -> None: ...


class SeenIds:
    """The most recent ``capacity`` event ids, for dropping duplicates in bounded memory."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, event_id: str) -> bool:
        """True if the id is new (and remember it), False for a duplicate."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


# ----------------------------------------------------------------------- sinks
class JsonlSink:
    """Appends one JSON object per line and fsyncs before the batch counts as written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")

    def existing_ids(self) -> Iterable[str]:
        with self.path.open("rb") as fh:
            for line in fh:
                event = decode_event(line)
                if event is not None:  # a torn last line after a crash is not an event
                    yield str(event["event_id"])

    def write(self, events: list[Event]) -> int:
        try:
            self._fh.write(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"cannot append to {self.path}: {exc}") from exc
        return 0

    def close(self) -> None:
        self._fh.close()


PARQUET_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("record_id", pa.string()),
        ("key", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("source_topic", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("source_timestamp", pa.int64()),
        ("detected_at", pa.string()),
        (
            "top_features",
            pa.list_(
                pa.struct([("name", pa.string()), ("error", pa.float64()), ("share", pa.float64())])
            ),
        ),
        ("event", pa.string()),  # the whole event as JSON (lossless, e.g. with `record`)
    ]
)


class ParquetSink:
    """Writes each batch as a new Parquet file in a directory (temp file, then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def existing_ids(self) -> Iterable[str]:
        for file in sorted(self.directory.glob("alerts-*.parquet")):
            yield from pq.read_table(file, columns=["event_id"]).column(0).to_pylist()

    def write(self, events: list[Event]) -> int:
        rows = [_flat(e) for e in events]
        name = f"alerts-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        tmp = self.directory / f".{name}.tmp"
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), tmp)
            os.replace(tmp, self.directory / f"{name}.parquet")
        except (OSError, pa.ArrowException) as exc:
            tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot write alerts to {self.directory}: {exc}") from exc
        return 0

    def close(self) -> None:
        """Nothing held open: every batch is a closed file."""


def _flat(e: Event) -> dict[str, Any]:
    model, src = e.get("model") or {}, e.get("source") or {}
    return {
        "event_id": e["event_id"],
        "type": e.get("type"),
        "record_id": e.get("record_id"),
        "key": e.get("key"),
        "score": e.get("score"),
        "threshold": e.get("threshold"),
        "is_anomaly": e.get("is_anomaly"),
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "source_topic": src.get("topic"),
        "source_partition": src.get("partition"),
        "source_offset": src.get("offset"),
        "source_timestamp": src.get("timestamp"),
        "detected_at": e.get("detected_at"),
        "top_features": e.get("top_features") or [],
        "event": json.dumps(e, separators=(",", ":")),
    }


# ------------------------------------------------------------------------ loop
@dataclass
class SinkStats:
    written: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    filtered: int = 0
    suppressed: int = 0
    invalid: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def run_sink(
    kafka: KafkaSettings,
    topic: str,
    group_id: str,
    sink: AlertSink,
    *,
    keep: AlertFilter | None = None,
    cooldown: Cooldown | None = None,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    seen: SeenIds | None = None,
) -> SinkStats:
    """Copy alerts from ``topic`` into ``sink`` until stopped; commit after every write."""
    stop = stop or threading.Event()
    keep = keep or AlertFilter()
    seen = seen or SeenIds()
    for event_id in sink.existing_ids():
        seen.add(event_id)
    stats = SinkStats()
    consumer = alert_consumer(kafka, group_id=group_id)
    try:
        consumer.subscribe([topic])
        for records in iter_polled(consumer, stop, idle_timeout_s):
            batch: list[Event] = []
            batch_ids: set[str] = set()
            for rec in records:
                event = decode_event(rec.value)
                if event is None:
                    stats.invalid += 1
                    log.warning(
                        "not an alert event, skipped",
                        extra={
                            "topic": rec.topic,
                            "partition": rec.partition,
                            "offset": rec.offset,
                        },
                    )
                elif not keep(event):
                    stats.filtered += 1
                elif event["event_id"] in seen or event["event_id"] in batch_ids:
                    stats.duplicates += 1
                elif cooldown is not None and not cooldown.allow(event):
                    stats.suppressed += 1
                else:
                    batch.append(event)
                    batch_ids.add(str(event["event_id"]))
            if batch:
                set_aside = sink.write(batch)  # durable before the offsets move
                stats.written += len(batch) - set_aside
                stats.dead_lettered += set_aside
                for event_id in batch_ids:
                    seen.add(event_id)
            try:
                consumer.commit()
            except KafkaError as exc:
                raise KafkaIOError(f"commit of group {group_id} failed: {exc!r}") from exc
            stats.batches += 1
    finally:
        consumer.close(autocommit=False)
        sink.close()
    return stats
