"""The streaming worker: wires consumer, batching, processing, sink, metrics and reload.

Loop: collect a batch -> process it into the sink -> make the output durable and commit the
batch's offsets -> repeat. A failed batch is retried from its first offsets (seek back) with
backoff, a bounded number of times; after that the worker exits non-zero with the offsets
uncommitted, so a restart (or another group member) replays it and nothing is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import TopicPartition

from pipeline.batching import BatchCollector
from pipeline.drift import DriftMonitor
from pipeline.exceptions import ArtifactError, KafkaIOError, PipelineError
from pipeline.kafka_io import OutputSink, make_consumer, make_producer, next_offsets
from pipeline.metrics import MetricsServer, PipelineMetrics
from pipeline.processing import BatchProcessor, Topics
from pipeline.scoring import resolve_device
from pipeline.serving import ModelHandle, ModelWatcher, check_compatible, open_model
from pipeline.settings import WorkerSettings
from pipeline.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    batches: int = 0
    consumed: int = 0
    scored: int = 0
    anomalies: int = 0
    rejected: int = 0
    busy_s: float = 0.0  # time spent processing and committing batches
    started_at: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "consumed": self.consumed,
            "scored": self.scored,
            "anomalies": self.anomalies,
            "rejected": self.rejected,
            "elapsed_s": round(self.elapsed_s, 3),
            "busy_s": round(self.busy_s, 3),
            "records_per_s": round(self.consumed / self.busy_s, 1) if self.busy_s else 0.0,
        }


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks assigned partitions for readiness and lag."""

    def __init__(self) -> None:
        self.partitions: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.partitions -= set(revoked)
        log.info("partitions revoked", extra={"partitions": _fmt_tps(revoked)})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.partitions |= set(assigned)
        log.info("partitions assigned", extra={"partitions": _fmt_tps(assigned)})


class Worker:
    """Long-running scorer of one consumer group member."""

    def __init__(self, settings: WorkerSettings, metrics: PipelineMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or PipelineMetrics()
        self.device = resolve_device(settings.device)
        self.model: ModelHandle = self._open(settings.model_version)
        self.metrics.set_model(self.model.name, self.model.version, self.model.threshold)
        self.watcher = ModelWatcher(
            settings.model_store, settings.model_name, settings.reload_interval_s
        )
        self.processor = BatchProcessor(
            Topics(settings.alert_topic, settings.dlq_topic, settings.scores_topic),
            self.metrics,
            include_record=settings.include_record,
            drift=DriftMonitor(self.metrics, settings.drift_half_life_records),
        )
        self.processor.drift.use_model(self.model.artifact.manifest)
        self.assignment = _Assignment()
        self.stop_event = threading.Event()
        self._failures = 0

    # --------------------------------------------------------------- public
    def run(
        self, max_batches: int | None = None, idle_timeout_s: float | None = None
    ) -> RunSummary:
        """Consume until stopped, ``max_batches`` processed, or idle for ``idle_timeout_s``."""
        summary = RunSummary()
        self._create_topics()
        with ExitStack() as stack:
            consumer = self._consumer()
            stack.callback(_close_consumer, consumer)
            producer = make_producer(self.settings.kafka, transactional_id=self._txn_id())
            stack.callback(producer.close)
            sink = OutputSink(producer, self.settings.delivery)
            if self.settings.metrics_port:
                server = MetricsServer(
                    self.metrics.registry,
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    is_ready=self.is_ready,
                ).start()
                stack.callback(server.stop)
            self._loop(consumer, sink, summary, max_batches, idle_timeout_s)
        log.info("worker stopped", extra=summary.as_dict())
        return summary

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and leave (signal-safe)."""
        self.stop_event.set()

    def is_ready(self) -> bool:
        return bool(self.assignment.partitions) and self.model is not None

    # ----------------------------------------------------------------- loop
    def _loop(
        self,
        consumer: KafkaConsumer,
        sink: OutputSink,
        summary: RunSummary,
        max_batches: int | None,
        idle_timeout_s: float | None,
    ) -> None:
        s = self.settings
        collector = BatchCollector(consumer, s.batch.max_size, s.batch.max_wait_ms / 1000)
        last_activity = time.monotonic()
        while not self.stop_event.is_set():
            self._maybe_reload()
            batch = collector.collect()
            self.metrics.ready.set(1 if self.is_ready() else 0)
            if batch is None:
                if idle_timeout_s is not None and time.monotonic() - last_activity > idle_timeout_s:
                    log.info("idle timeout reached", extra={"idle_timeout_s": idle_timeout_s})
                    break
                continue
            self._process_with_retry(batch.records, consumer, sink, summary)
            self._update_lag(consumer)
            last_activity = time.monotonic()
            if max_batches is not None and summary.batches >= max_batches:
                break

    def _process_with_retry(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        """Process a batch; on failure rewind so the next collect() re-reads it, with backoff."""
        try:
            self._process_once(records, consumer, sink, summary)
            self._failures = 0
        except CommitFailedError as exc:
            # The group rebalanced while we worked: our output is durable, the new owner
            # replays from the last commit (at-least-once duplicates, same event ids).
            log.warning("commit failed after rebalance", extra={"error": repr(exc)})
        except (PipelineError, KafkaError) as exc:
            sink.abort()
            self._failures += 1
            self.metrics.batch_failures.labels(stage=type(exc).__name__).inc()
            log.warning(
                "batch failed, will retry",
                extra={"attempt": self._failures, "error": repr(exc), "batch": _fmt_batch(records)},
            )
            if self._failures > self.settings.max_batch_retries:
                raise KafkaIOError(
                    f"batch {_fmt_batch(records)} failed {self._failures} times: {exc}"
                ) from exc
            _rewind(consumer, records)
            delay = self.settings.retry_backoff_s * 2 ** (self._failures - 1)
            self.stop_event.wait(min(30.0, delay))

    def _process_once(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        started = time.perf_counter()
        sink.begin()
        result = self.processor.process(records, self.model, sink)
        sink.commit(consumer, next_offsets(records))
        now_ms = time.time() * 1000
        for rec in records:
            if rec.timestamp is not None and rec.timestamp > 0:
                self.metrics.end_to_end_latency.observe(max(0.0, (now_ms - rec.timestamp) / 1000))
        self.metrics.batches.inc()
        self.metrics.commits.inc()
        summary.batches += 1
        summary.consumed += result.consumed
        summary.scored += result.scored
        summary.anomalies += result.anomalies
        summary.rejected += result.rejected
        summary.busy_s += time.perf_counter() - started

    # --------------------------------------------------------------- pieces
    def _create_topics(self) -> None:
        s = self.settings
        if s.create_topics:
            outputs = [s.alert_topic, s.dlq_topic, *([s.scores_topic] if s.scores_topic else [])]
            ensure_topics(s.kafka, outputs, s.topic_partitions, s.topic_replication)

    def _consumer(self) -> KafkaConsumer:
        s = self.settings
        consumer = make_consumer(
            s.kafka,
            s.group_id,
            max_poll_records=s.batch.max_size,
            auto_offset_reset=s.auto_offset_reset,
        )
        if s.input_pattern:
            consumer.subscribe(pattern=s.input_pattern, listener=self.assignment)
        else:
            consumer.subscribe(topics=s.input_topics, listener=self.assignment)
        return consumer

    def _txn_id(self) -> str | None:
        s = self.settings
        if s.delivery != "exactly-once":
            return None
        return s.transactional_id or f"{s.group_id}-{s.kafka.client_id}"

    def _open(self, version: str | None) -> ModelHandle:
        s = self.settings
        return open_model(
            s.model_store,
            s.model_name,
            version,
            self.device,
            id_field=s.id_field,
            top_k=s.top_k,
            max_record_bytes=s.max_record_bytes,
        )

    def _maybe_reload(self) -> None:
        if self.settings.model_version is not None:
            return
        version = self.watcher.poll(self.model)
        if version is None:
            return
        try:
            candidate = self._open(version)
            check_compatible(self.model.spec, candidate.spec)
        except ArtifactError as exc:
            self.watcher.refuse(version)
            self.metrics.model_reloads.labels(result="refused").inc()
            log.error(
                "new model refused, keeping the current one",
                extra={"candidate": version, "serving": self.model.version, "error": str(exc)},
            )
            return
        old, self.model = self.model.version, candidate
        self.metrics.set_model(candidate.name, candidate.version, candidate.threshold)
        self.metrics.model_reloads.labels(result="loaded").inc()
        log.info("model reloaded", extra={"from": old, "to": candidate.version})

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        for tp in list(self.assignment.partitions):
            try:
                high = consumer.highwater(tp)
                pos = consumer.position(tp, timeout_ms=0) if high is not None else None
            except (KafkaError, AssertionError, ValueError):
                continue
            if high is not None and pos is not None:
                self.metrics.consumer_lag.labels(partition=f"{tp.topic}-{tp.partition}").set(
                    max(0, high - pos)
                )


def _rewind(consumer: KafkaConsumer, records: list[Any]) -> None:
    """Seek each partition back to the batch's first offset so the retry sees the same data."""
    first: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        first[tp] = min(first.get(tp, rec.offset), rec.offset)
    for tp, offset in first.items():
        if tp in consumer.assignment():
            consumer.seek(tp, offset)


def _close_consumer(consumer: KafkaConsumer) -> None:
    """Leave the group promptly so partitions move to other members at once."""
    try:
        consumer.close(autocommit=False)
    except KafkaError as exc:
        log.warning("consumer close failed", extra={"error": repr(exc)})


def _fmt_tps(tps: Any) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


def _fmt_batch(records: list[Any]) -> str:
    if not records:
        return "empty"
    first, last = records[0], records[-1]
    return (
        f"{len(records)} records from {first.topic}[{first.partition}] offset={first.offset}"
        f" to {last.topic}[{last.partition}] offset={last.offset}"
    )
