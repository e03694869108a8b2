"""Account for every input record: scored or dead-lettered, once, or lost.

The worker writes one event per scored record to the scores topic (``source.topic``,
``source.partition``, ``source.offset``) and one dead letter per rejected record to the
dead-letter topic (``dlq.source.*`` headers). Together they name every input offset the worker
processed. ``audit`` reads the input topic (which offsets exist, as the worker's
``read_committed`` consumer sees them), both output topics and, optionally, the consumer group's
committed offsets, and reports per input partition:

- ``lost``: input records below the committed offset with no output at all (must be 0);
- ``duplicates``: extra outputs for one input offset (a replay after a crash in at-least-once
  mode; consumers drop them by ``event_id``; must be 0 in exactly-once mode);
- ``uncommitted_output``: offsets at or past the committed offset that already have output
  (what a restart will replay: duplicates to come in at-least-once mode);
- ``pending``: offsets at or past the committed offset without output (not processed yet).

Without a group, every input record counts as due. Output topics are read ``read_committed``
by default, as exactly-once consumers must: aborted attempts are then invisible. An open
transaction holds those readers back at its first offset; the report lists such partitions in
``open_transactions`` (``settled`` is false), because output behind it looks lost until the
transaction ends. The output topics must keep at least what the input topic keeps (retention),
otherwise old records show up as lost.

``python -m pipeline audit`` runs it with the worker's ``PIPELINE_*`` settings.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.contract.exceptions import KafkaIOError
from pipeline.kafka.clients import new_consumer
from pipeline.kafka.metadata import wait_for_partitions
from pipeline.kafka.settings import KafkaSettings

MAX_LISTED = 20  # offsets listed per partition in a report (the counts are always complete)
_UNSET = np.iinfo(np.int64).max


class _Source(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class _ScoreEvent(msgspec.Struct):
    source: _Source


_decode_event = msgspec.json.Decoder(_ScoreEvent).decode


@dataclass
class PartitionAudit:
    """What happened to one input partition's records."""

    topic: str
    partition: int
    start: int  # first offset present (log start)
    end: int  # log end offset (read_committed: last stable offset) when the audit began
    committed: int | None  # the group's committed offset, None without a group or commit
    records: int = 0  # input records in [start, end)
    due: int = 0  # records the worker should have processed (below committed)
    scored: int = 0  # outputs on the scores topic for due records
    dead_lettered: int = 0  # outputs on the dead-letter topic for due records
    lost: int = 0
    duplicates: int = 0
    uncommitted_output: int = 0
    pending: int = 0
    lost_offsets: list[int] = field(default_factory=list)
    duplicate_offsets: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass
class AuditReport:
    """The audit of one or more input topics; ``ok`` when nothing is lost."""

    partitions: list[PartitionAudit]
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    dead_letters_without_reason: int = 0  # dead letters with an empty dlq.reason
    foreign_dead_letters: int = 0  # records on the dead-letter topic without our headers
    unknown_output: int = 0  # outputs naming an offset the input topic does not hold
    open_transactions: list[str] = field(default_factory=list)  # "topic[p] lso=.. hw=.."

    def _total(self, attr: str) -> int:
        return sum(int(getattr(p, attr)) for p in self.partitions)

    @property
    def records(self) -> int:
        return self._total("records")

    @property
    def due(self) -> int:
        return self._total("due")

    @property
    def scored(self) -> int:
        return self._total("scored")

    @property
    def dead_lettered(self) -> int:
        return self._total("dead_lettered")

    @property
    def lost(self) -> int:
        return self._total("lost")

    @property
    def duplicates(self) -> int:
        return self._total("duplicates")

    @property
    def uncommitted_output(self) -> int:
        return self._total("uncommitted_output")

    @property
    def pending(self) -> int:
        return self._total("pending")

    @property
    def settled(self) -> bool:
        """No open transaction hides output from read_committed readers."""
        return not self.open_transactions

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.dead_letters_without_reason == 0

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "due": self.due,
            "scored": self.scored,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "uncommitted_output": self.uncommitted_output,
            "pending": self.pending,
            "dlq_reasons": dict(sorted(self.dlq_reasons.items())),
            "dead_letters_without_reason": self.dead_letters_without_reason,
            "foreign_dead_letters": self.foreign_dead_letters,
            "unknown_output": self.unknown_output,
            "open_transactions": self.open_transactions,
            "ok": self.ok,
        }

    def as_dict(self) -> dict[str, Any]:
        parts = [
            {
                "partition": p.name,
                "start": p.start,
                "end": p.end,
                "committed": p.committed,
                "records": p.records,
                "due": p.due,
                "scored": p.scored,
                "dead_lettered": p.dead_lettered,
                "lost": p.lost,
                "duplicates": p.duplicates,
                "uncommitted_output": p.uncommitted_output,
                "pending": p.pending,
                "lost_offsets": p.lost_offsets,
                "duplicate_offsets": p.duplicate_offsets,
            }
            for p in self.partitions
        ]
        return {**self.summary(), "partitions": parts}


@dataclass
class _Ledger:
    """Per-partition arrays indexed by ``offset - start``: input present, outputs seen."""

    start: int
    end: int
    present: np.ndarray[Any, np.dtype[np.bool_]]
    scored: np.ndarray[Any, np.dtype[np.int32]]
    dead: np.ndarray[Any, np.dtype[np.int32]]

    @classmethod
    def empty(cls, start: int, end: int) -> _Ledger:
        n = max(0, end - start)
        return cls(
            start,
            end,
            np.zeros(n, dtype=np.bool_),
            np.zeros(n, dtype=np.int32),
            np.zeros(n, dtype=np.int32),
        )

    def index(self, offset: int) -> int | None:
        return offset - self.start if self.start <= offset < self.end else None


def audit(
    kafka: KafkaSettings,
    input_topics: Sequence[str],
    scores_topic: str,
    dlq_topic: str,
    *,
    group_id: str | None = None,
    isolation_level: str = "read_committed",
    timeout_s: float = 120.0,
) -> AuditReport:
    """Read the topics and account for every input record (see the module docstring)."""
    ledgers: dict[TopicPartition, _Ledger] = {}
    wanted = set(input_topics)
    for topic in input_topics:
        ranges = _scan(kafka, topic, "read_committed", timeout_s, lambda recs: None, keep=True)
        for tp, (start, end, offsets) in ranges.items():
            ledger = _Ledger.empty(start, end)
            idx = np.asarray(offsets, dtype=np.int64) - start
            ledger.present[idx[(idx >= 0) & (idx < len(ledger.present))]] = True
            ledgers[tp] = ledger
    report = AuditReport(partitions=[])

    def on_score(records: Iterable[Any]) -> None:
        for rec in records:
            try:
                source = _decode_event(rec.value).source
            except (msgspec.DecodeError, TypeError):
                report.unknown_output += 1
                continue
            if source.topic in wanted:
                _count(ledgers, report, source.topic, source.partition, source.offset, "scored")

    def on_dead(records: Iterable[Any]) -> None:
        for rec in records:
            headers = {k: bytes(v) for k, v in rec.headers or ()}
            try:
                topic = headers["dlq.source.topic"].decode()
                partition = int(headers["dlq.source.partition"])
                offset = int(headers["dlq.source.offset"])
            except (KeyError, ValueError, UnicodeDecodeError):
                report.foreign_dead_letters += 1
                continue
            if topic not in wanted:
                continue
            reason = headers.get("dlq.reason", b"").decode("utf-8", "replace")
            if reason:
                report.dlq_reasons[reason] += 1
            else:
                report.dead_letters_without_reason += 1
            _count(ledgers, report, topic, partition, offset, "dead")

    for topic, handler in ((scores_topic, on_score), (dlq_topic, on_dead)):
        _scan(kafka, topic, isolation_level, timeout_s, handler)
        if isolation_level == "read_committed":
            report.open_transactions += _open_transactions(kafka, topic)
    committed = _committed(kafka, group_id, list(ledgers)) if group_id else {}
    for tp in sorted(ledgers, key=lambda t: (t.topic, t.partition)):
        report.partitions.append(_judge(tp, ledgers[tp], committed.get(tp), bool(group_id)))
    return report


def _count(
    ledgers: dict[TopicPartition, _Ledger],
    report: AuditReport,
    topic: str,
    partition: int,
    offset: int,
    kind: str,
) -> None:
    ledger = ledgers.get(TopicPartition(topic, partition))
    i = ledger.index(offset) if ledger is not None else None
    if ledger is None or i is None or not ledger.present[i]:
        report.unknown_output += 1
        return
    (ledger.scored if kind == "scored" else ledger.dead)[i] += 1


def _judge(
    tp: TopicPartition, ledger: _Ledger, committed: int | None, has_group: bool
) -> PartitionAudit:
    """Without a group every record is due; with one, those below its committed offset
    (none when the group never committed this partition)."""
    offsets = np.flatnonzero(ledger.present) + ledger.start
    outputs = (ledger.scored + ledger.dead)[ledger.present]
    upto = (committed or 0) if has_group else _UNSET
    due_mask = offsets < upto
    part = PartitionAudit(tp.topic, tp.partition, ledger.start, ledger.end, committed)
    part.records = len(offsets)
    part.due = int(due_mask.sum())
    part.scored = int(ledger.scored[ledger.present][due_mask].sum())
    part.dead_lettered = int(ledger.dead[ledger.present][due_mask].sum())
    lost = offsets[due_mask & (outputs == 0)]
    dup = offsets[outputs > 1]
    part.lost = len(lost)
    part.lost_offsets = lost[:MAX_LISTED].tolist()
    part.duplicates = int((outputs[outputs > 1] - 1).sum())
    part.duplicate_offsets = dup[:MAX_LISTED].tolist()
    part.uncommitted_output = int(((~due_mask) & (outputs > 0)).sum())
    part.pending = int(((~due_mask) & (outputs == 0)).sum())
    return part


def _scan(
    kafka: KafkaSettings,
    topic: str,
    isolation_level: str,
    timeout_s: float,
    handle: Callable[[list[Any]], None],
    *,
    keep: bool = False,
) -> dict[TopicPartition, tuple[int, int, list[int]]]:
    """Read ``topic`` from its start to the end offsets it had when the scan began, passing
    each polled chunk to ``handle``; with ``keep`` also return every record's offset."""
    consumer = _consumer(kafka, isolation_level)
    try:
        parts = wait_for_partitions(consumer, topic, min(timeout_s, 30.0))
        consumer.assign(parts)
        starts = consumer.beginning_offsets(parts)
        ends = consumer.end_offsets(parts)
        seen: dict[TopicPartition, list[int]] = {tp: [] for tp in parts}
        consumer.seek_to_beginning(*parts)
        todo = {tp for tp in parts if ends[tp] > starts[tp]}
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(todo))
                raise KafkaIOError(f"audit: reading {stuck} did not finish in {timeout_s:.0f}s")
            for tp, polled in consumer.poll(timeout_ms=500, max_records=50_000).items():
                records = [r for r in polled if r.offset < ends[tp]]
                handle(records)
                if keep:
                    seen[tp].extend(r.offset for r in records)
            for tp in list(todo):
                if consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return {tp: (starts[tp], ends[tp], seen[tp]) for tp in parts}
    except KafkaError as exc:
        raise KafkaIOError(f"audit: reading {topic} failed: {exc!r}") from exc
    finally:
        consumer.close()


def _open_transactions(kafka: KafkaSettings, topic: str) -> list[str]:
    """Partitions of ``topic`` whose last stable offset trails the high watermark."""
    stable, high = _consumer(kafka, "read_committed"), _consumer(kafka, "read_uncommitted")
    try:
        parts = wait_for_partitions(stable, topic, 30)
        lso, hw = stable.end_offsets(parts), high.end_offsets(parts)
    except KafkaError as exc:
        raise KafkaIOError(f"audit: offsets of {topic} failed: {exc!r}") from exc
    finally:
        stable.close()
        high.close()
    return [
        f"{tp.topic}[{tp.partition}] lso={lso[tp]} hw={hw[tp]}" for tp in parts if lso[tp] < hw[tp]
    ]


def _committed(
    kafka: KafkaSettings, group_id: str, parts: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    consumer = _consumer(kafka, "read_committed", group_id=group_id)
    try:
        return {tp: consumer.committed(tp) for tp in parts}
    except KafkaError as exc:
        raise KafkaIOError(f"audit: committed offsets of group {group_id} failed: {exc!r}") from exc
    finally:
        consumer.close()


def _consumer(kafka: KafkaSettings, isolation_level: str, group_id: str | None = None) -> Any:
    try:
        return new_consumer(
            **kafka.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            isolation_level=isolation_level,
        )
    except KafkaError as exc:
        raise KafkaIOError(f"audit: cannot connect to {kafka.bootstrap_servers}: {exc!r}") from exc
