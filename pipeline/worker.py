"""The streaming worker: wires consumer, batching, processing, sink, metrics and reload.

Loop: swap in a new model version if one is due -> collect a batch -> process it (live model,
then the shadow model if any) into the sink -> make the output durable and commit the batch's
offsets -> repeat.

Failures (README "Delivery guarantees"):

- a fatal Kafka error (authentication, authorization, fenced producer, ...) stops the worker
  at once (``KafkaFatalError``, exit 4) with the batch uncommitted;
- anything else fails the batch: its output is aborted, the producer replaced, the consumer
  rewound to the batch's first offsets and the batch collected again after an exponential
  backoff; after ``max_batch_retries`` consecutive failures the worker exits non-zero with the
  offsets uncommitted, so a restart (or another group member) replays it and nothing is lost;
- a commit refused because the group rebalanced is not a failure: the output is durable and
  the partitions' new owner replays from the last commit (same event ids).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.batching import BatchCollector
from pipeline.drift import DriftMonitor
from pipeline.exceptions import (
    ArtifactError,
    CommitRejected,
    DeliveryError,
    KafkaFatalError,
    KafkaIOError,
    PipelineError,
    ScoringError,
)
from pipeline.kafka_io import (
    OutputSink,
    fatal_reason,
    is_fatal,
    make_consumer,
    make_producer,
    next_offsets,
)
from pipeline.metrics import MetricsServer, PipelineMetrics
from pipeline.overlap import PrefetchingSource
from pipeline.processing import BatchProcessor, BatchResult, Topics, observe_end_to_end
from pipeline.reload import AnnounceListener, ModelSlot
from pipeline.resilient import OomAction
from pipeline.scoring import resolve_device, torch_threads
from pipeline.serving import ModelHandle, ModelWatcher, check_compatible, open_model
from pipeline.settings import WorkerSettings
from pipeline.shadow import ShadowScorer
from pipeline.topics import ensure_topics
from pipeline.txnid import TransactionalIdSlot, claim_transactional_id

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


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

    def add(self, result: BatchResult, busy_s: float) -> None:
        self.batches += 1
        self.consumed += result.consumed
        self.scored += result.scored
        self.anomalies += result.anomalies
        self.rejected += result.rejected
        self.busy_s += busy_s

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
    """Tracks assigned partitions (readiness, lag) and tells the worker which ones it lost.

    With the eager protocol (kafka-python's default assignors) every rebalance first revokes
    *all* partitions and then assigns the new set; kafka-python keeps the fetch position of a
    partition assigned again. So a partition is only lost when it is revoked and not assigned
    back: those are reported to ``on_lost`` (at assignment time), the others keep their place
    in the batch being collected.
    """

    def __init__(self, on_lost: Callable[[set[TopicPartition]], None]) -> None:
        self.partitions: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self._on_lost = on_lost

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.partitions -= set(revoked)
        self._revoked |= set(revoked)
        log.info("partitions revoked", extra={"partitions": _fmt_tps(revoked)})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.partitions |= set(assigned)
        lost, self._revoked = self._revoked - set(assigned), set()
        log.info("partitions assigned", extra={"partitions": _fmt_tps(assigned)})
        if lost:
            self._on_lost(lost)


class Worker:
    """Long-running scorer of one consumer group member."""

    def __init__(self, settings: WorkerSettings, metrics: PipelineMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or PipelineMetrics()
        self.device = resolve_device(settings.device)
        self.started_ms = int(time.time() * 1000)  # announcements from here on are heard
        self.announcer: AnnounceListener | None = None
        self.live = self._slot("live", settings.model_name, settings.model_version)
        self.live.start()  # ArtifactError here: nothing to serve, the caller exits (code 3)
        self.shadow = self._start_shadow() if settings.shadow_enabled else None
        self.processor = BatchProcessor(
            Topics(settings.alert_topic, settings.dlq_topic, settings.scores_topic),
            self.metrics,
            include_record=settings.include_record,
            drift=DriftMonitor(self.metrics, settings.drift_half_life_records),
        )
        self.processor.drift.use_model(self.model.artifact.manifest)
        self.shadow_scorer = ShadowScorer(settings.shadow_topic, self.metrics)
        self.assignment = _Assignment(self._on_lost)
        self.stop_event = threading.Event()
        self._collector: BatchCollector | None = None
        self._failures = 0
        self._source: PrefetchingSource | None = None  # polls ahead while the model runs
        self._overlap = settings.overlap_compute
        self._last_beat = time.monotonic()
        self._txn_slot: TransactionalIdSlot | None = None
        self._sink: OutputSink | None = None
        self.metrics.kafka_wait.set_function(self.kafka_wait_s)

    @property
    def model(self) -> ModelHandle:
        """The live model being served."""
        assert self.live.current is not None
        return self.live.current

    # --------------------------------------------------------------- public
    def run(
        self, max_batches: int | None = None, idle_timeout_s: float | None = None
    ) -> RunSummary:
        """Consume until stopped, ``max_batches`` processed, or idle for ``idle_timeout_s``."""
        summary = RunSummary()
        with ExitStack() as stack:
            if self.settings.metrics_port:
                # first, so /healthz answers while Kafka clients bootstrap (/readyz: not yet)
                server = MetricsServer(
                    self.metrics.registry,
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    is_ready=self.is_ready,
                    is_alive=self.is_alive,
                    health_note=self.health_note,
                ).start()
                stack.callback(server.stop)
            self._beat()
            self._create_topics()
            stack.enter_context(torch_threads(self.settings.torch_threads))
            stack.callback(self.processor.close)
            consumer = self._consumer()
            stack.callback(_close_consumer, consumer)
            stack.callback(self._release_txn_id)  # after the producer is closed
            sink = OutputSink(self._make_producer, self.settings.delivery)
            self._sink = sink
            stack.callback(sink.close)
            _ = sink.producer  # connect now: bad credentials fail at start, not at batch one
            if self.settings.announce_topic:
                slots = [self.live, *([self.shadow] if self.shadow else [])]
                self.announcer = AnnounceListener(
                    self.settings.kafka,
                    self.settings.announce_topic,
                    slots,
                    on_record=lambda r: self.metrics.announcements.labels(result=r).inc(),
                    since_ms=self.started_ms,
                ).start()
                stack.callback(self.announcer.stop)
            self._loop(consumer, sink, summary, max_batches, idle_timeout_s)
        log.info("worker stopped", extra=summary.as_dict())
        return summary

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and leave (signal-safe)."""
        self.stop_event.set()

    def is_ready(self) -> bool:
        return bool(self.assignment.partitions) and self.live.current is not None

    def is_alive(self) -> bool:
        """The loop went round recently, or it is waiting for the broker: a broker outage
        blocks flushes and transaction commits, and restarting the worker would not end it
        (it would only fail to bootstrap). Anything else stuck makes this false."""
        if self.kafka_wait_s() > 0:
            return True
        return time.monotonic() - self._last_beat < self.settings.liveness_timeout_s

    def kafka_wait_s(self) -> float:
        """How long the loop has been waiting for Kafka (``pipeline_kafka_wait_seconds``)."""
        return self._sink.waited_s() if self._sink is not None else 0.0

    def health_note(self) -> str:
        waited = self.kafka_wait_s()
        return f"waiting for Kafka for {waited:.0f} s" if waited >= 1 else ""

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
        self._source = PrefetchingSource(consumer, s.batch.max_size)
        collector = BatchCollector(
            self._source,
            s.batch.max_size,
            s.batch.max_wait_ms / 1000,
            should_stop=self.stop_event.is_set,
        )
        self._collector = collector
        last_activity = time.monotonic()
        while not self.stop_event.is_set():
            self._beat()
            self._reload_models()
            try:
                batch = collector.collect()
            except KafkaError as exc:
                # records gathered before the error were never processed: read them again
                _rewind(consumer, collector.abandoned + self._drain_prefetched())
                self._failed(exc, "poll", [], sink)
                continue
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
        self._collector = None

    def _process_with_retry(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        """Process a batch; on failure rewind so the next collect() re-reads it, with backoff."""
        try:
            self._process_once(records, consumer, sink, summary)
            self._failures = 0
        except CommitRejected as exc:
            self._failures = 0  # the output is durable: nothing to retry
            self.metrics.commits_rejected.inc()
            log.warning(
                "offset commit refused after a rebalance; the new owner replays the batch",
                extra={"batch": _fmt_batch(records), "error": str(exc)},
            )
        except (PipelineError, KafkaError) as exc:
            sink.abort()
            self._failed(exc, _stage(exc), records, sink)
            _rewind(consumer, records + self._drain_prefetched())

    def _process_once(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        started = time.perf_counter()
        live = self.model
        sink.begin()
        source = self._source if self._overlap else None
        result = self.processor.process(
            records, live, sink, source.prefetch if source is not None else None
        )
        self._score_shadow(records, sink)
        sink.commit(consumer, next_offsets(records))
        self.processor.observe(result)  # only now: a failed attempt must not count
        m = self.metrics
        observe_end_to_end(m, records, time.time() * 1000)
        m.batches.inc()
        m.commits.inc()
        m.model_scored.labels(role="live", version=live.version).inc(result.scored)
        m.model_anomalies.labels(role="live", version=live.version).inc(result.anomalies)
        summary.add(result, time.perf_counter() - started)

    def _failed(self, exc: BaseException, stage: str, records: list[Any], sink: OutputSink) -> None:
        """Apply the failure policy before a retry: count, log, replace the producer, back off.

        Raises KafkaFatalError for errors retrying cannot fix, and the batch's error once
        ``max_batch_retries`` consecutive attempts failed."""
        self.metrics.batch_failures.labels(stage=stage).inc()
        where = _fmt_batch(records) if records else "polling"
        if is_fatal(exc):
            log.error(
                "fatal Kafka error, stopping without retry",
                extra={"stage": stage, "batch": where, "error": repr(exc)},
            )
            raise KafkaFatalError(
                f"{where}: fatal Kafka error {fatal_reason(exc)} (not retried): {exc}"
            ) from exc
        if isinstance(exc, KafkaError | KafkaIOError):
            sink.reset()  # an idempotent/transactional producer that failed refuses all sends
        self._failures += 1
        log.warning(
            "batch failed, will retry",
            extra={"stage": stage, "attempt": self._failures, "error": repr(exc), "batch": where},
        )
        if self._failures > self.settings.max_batch_retries:
            error = KafkaIOError if isinstance(exc, KafkaError | KafkaIOError) else ScoringError
            raise error(f"{where} failed {self._failures} times, giving up: {exc}") from exc
        delay = min(MAX_BACKOFF_S, self.settings.retry_backoff_s * 2 ** (self._failures - 1))
        self._wait(delay)

    # --------------------------------------------------------------- pieces
    def _drain_prefetched(self) -> list[Any]:
        """Records polled ahead but not processed: a rewind must cover them too."""
        return self._source.drain() if self._source is not None else []

    def _score_shadow(self, records: list[Any], sink: OutputSink) -> None:
        """Run the shadow model; its failure never fails the live batch (its sends do: they
        are part of the batch's output and transaction)."""
        shadow = self.shadow.current if self.shadow else None
        if shadow is None:
            return
        try:
            self.shadow_scorer.process(records, shadow, sink)
        except KafkaIOError:
            raise
        except (PipelineError, RuntimeError, ValueError) as exc:
            self.metrics.shadow_failures.inc()
            log.warning(
                "shadow model failed on a batch",
                extra={"version": shadow.version, "batch": _fmt_batch(records), "error": repr(exc)},
            )

    def _slot(self, role: str, name: str, pinned: str | None) -> ModelSlot:
        s = self.settings
        live = role == "live"
        return ModelSlot(
            role="live" if live else "shadow",
            name=name,
            pinned=pinned,
            watcher=ModelWatcher(s.model_store, name, s.reload_interval_s),
            opener=lambda version: self._open(name, version),
            validate=self._compatible_with_live if live else None,
            on_loaded=self._live_loaded if live else self._shadow_loaded,
            on_refused=lambda version, exc: (
                (self.metrics.model_reloads if live else self.metrics.shadow_reloads)
                .labels(result="refused")
                .inc()
            ),
        )

    def _start_shadow(self) -> ModelSlot:
        s = self.settings
        slot = self._slot("shadow", s.shadow_name, s.shadow_model_version)
        try:
            slot.start()
        except ArtifactError as exc:
            self.metrics.shadow_reloads.labels(result="refused").inc()
            log.error(
                "shadow model unavailable; scoring without it until one loads",
                extra={"name": s.shadow_name, "version": s.shadow_model_version, "error": str(exc)},
            )
        return slot

    def _live_loaded(self, handle: ModelHandle, reloaded: bool) -> None:
        self.metrics.set_model(handle.name, handle.version, handle.threshold)
        if reloaded:
            self.metrics.model_reloads.labels(result="loaded").inc()

    def _shadow_loaded(self, handle: ModelHandle, reloaded: bool) -> None:
        self.metrics.set_shadow(handle.name, handle.version, handle.threshold)
        self.metrics.shadow_reloads.labels(result="loaded").inc()

    def _compatible_with_live(self, candidate: ModelHandle) -> None:
        if self.live.current is None:
            return
        check_compatible(self.live.current.spec, candidate.spec)

    def _reload_models(self) -> None:
        self.live.maybe_reload()
        if self.shadow is not None:
            self.shadow.maybe_reload()

    def _on_lost(self, lost: set[TopicPartition]) -> None:
        """Partitions now owned by another member: their records in the batch being collected
        would duplicate the new owner's work (it starts from the last commit)."""
        if self._collector is not None:
            dropped = self._collector.drop_partitions(lost)
            if dropped:
                self.metrics.records_revoked.inc(dropped)
                log.info(
                    "dropped lost partitions' records from the batch being collected",
                    extra={"records": dropped, "partitions": _fmt_tps(lost)},
                )
        for tp in lost:
            with suppress(KeyError):
                self.metrics.consumer_lag.remove(f"{tp.topic}-{tp.partition}")

    def _on_oom(self, action: OomAction, rows: int) -> None:
        self.metrics.oom_events.labels(action=action).inc()

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        self.metrics.last_loop.set(time.time())

    def _wait(self, seconds: float) -> None:
        """Sleep for a backoff, staying alive for /healthz and responsive to stop()."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            self._beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop_event.wait(min(1.0, remaining))

    def _create_topics(self) -> None:
        s = self.settings
        if s.create_topics:
            outputs = [s.alert_topic, s.dlq_topic, s.scores_topic, s.shadow_topic]
            ensure_topics(
                s.kafka, [t for t in outputs if t], s.topic_partitions, s.topic_replication
            )

    def _consumer(self) -> KafkaConsumer:
        s = self.settings
        consumer = make_consumer(
            s.kafka,
            s.group_id,
            max_poll_records=s.batch.max_size,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(3_000, s.session_timeout_ms // 3),
        )
        if s.input_pattern:
            consumer.subscribe(pattern=s.input_pattern, listener=self.assignment)
            return consumer
        # Without the topics' metadata at the first JoinGroup, kafka-python's assignor hands out
        # nothing and a second rebalance follows at once; once in a while (seen in ~1 of 10
        # test runs) that rejoin stalled for most of a session timeout. Fetch it first.
        for topic in s.input_topics:
            try:
                known = consumer.partitions_for_topic(topic)
            except KafkaError as exc:
                _close_consumer(consumer)
                cls = KafkaFatalError if is_fatal(exc) else KafkaIOError
                raise cls(f"cannot read metadata of input topic {topic}: {exc!r}") from exc
            if not known:
                log.warning("input topic does not exist (yet)", extra={"topic": topic})
        consumer.subscribe(topics=s.input_topics, listener=self.assignment)
        return consumer

    def _make_producer(self) -> KafkaProducer:
        return make_producer(self.settings.kafka, transactional_id=self._txn_id())

    def _txn_id(self) -> str | None:
        s = self.settings
        if s.delivery != "exactly-once":
            return None
        if s.transactional_id:
            return s.transactional_id
        if self._txn_slot is None:  # held until run() ends: see pipeline.txnid
            self._txn_slot = claim_transactional_id(s.group_id)
            log.info(
                "transactional id", extra={"transactional_id": self._txn_slot.transactional_id}
            )
        return self._txn_slot.transactional_id

    def _release_txn_id(self) -> None:
        if self._txn_slot is not None:
            self._txn_slot.release()
            self._txn_slot = None

    def _open(self, name: str, version: str | None) -> ModelHandle:
        s = self.settings
        return open_model(
            s.model_store,
            name,
            version,
            self.device,
            id_field=s.id_field,
            top_k=s.top_k,
            max_record_bytes=s.max_record_bytes,
            on_oom=self._on_oom,
        )

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


def _stage(exc: BaseException) -> str:
    """Label of ``pipeline_batch_failures_total``: where the batch failed."""
    if isinstance(exc, ScoringError):
        return "score"
    if isinstance(exc, DeliveryError):
        return "deliver"
    if isinstance(exc, KafkaIOError | KafkaError):
        return "commit"
    return "process"


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
