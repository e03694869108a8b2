"""The streaming worker: wires consumer, batching, processing, sink, metrics and reload.

Loop: swap in a new model version if one is due -> collect a batch -> process it (live model,
then the shadow model if any) into the sink -> make the output durable and commit the batch's
offsets -> repeat.

Failures (README "Delivery guarantees"; the policy is ``pipeline.worker.retry``):

- a fatal Kafka error (authentication, authorization, ...) stops the worker at once
  (``KafkaFatalError``, exit 4) with the batch uncommitted;
- exactly-once, a fenced transactional producer (its transaction outlived the transaction
  timeout) or a transactional call past its deadline is not fatal: the producer is replaced,
  the consumer re-reads from the committed offsets, a bounded number of times
  (``pipeline.worker.recovery``);
- anything else fails the batch: its output is aborted, the producer replaced, the consumer
  rewound to the batch's first offsets and the batch collected again after a backoff; after
  ``max_batch_retries`` consecutive failures the worker exits non-zero with the offsets
  uncommitted, so a restart (or another group member) replays it and nothing is lost;
- a commit refused because the group rebalanced is not a failure: at-least-once the output
  is durable and the partitions' new owner replays from the last commit (same event ids);
  exactly-once the transaction is aborted (the offsets are committed only under the group
  generation the batch was polled in) and the batch is read again by whoever owns it.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack, suppress
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.contract.exceptions import CommitRejected, KafkaIOError, PipelineError
from pipeline.contract.scoring import resolve_device, torch_threads
from pipeline.kafka.clients import make_producer
from pipeline.kafka.idle import IdleClock
from pipeline.kafka.topics import TopicDurability, ensure_topics
from pipeline.worker import consumer as consumers
from pipeline.worker.assignment import Assignment, fmt_partitions
from pipeline.worker.batching import BatchCollector
from pipeline.worker.drift import DriftMonitor
from pipeline.worker.failures import describe_batch, is_kafka_failure, stage_of
from pipeline.worker.metrics import MetricsServer, PipelineMetrics
from pipeline.worker.processing import BatchProcessor, Topics, observe_end_to_end
from pipeline.worker.recovery import ProducerRecovery, RebuildReason, rebuild_reason
from pipeline.worker.reload import AnnounceListener
from pipeline.worker.retry import RetryPolicy
from pipeline.worker.served import ServedModels
from pipeline.worker.serving import ModelHandle
from pipeline.worker.settings import WorkerSettings
from pipeline.worker.shadow import ShadowResult, ShadowScorer
from pipeline.worker.sink import OutputSink, next_offsets
from pipeline.worker.startpos import StartPositions
from pipeline.worker.summary import RunSummary
from pipeline.worker.txnid import TransactionalIds

log = logging.getLogger(__name__)

__all__ = ["RunSummary", "Worker"]


class Worker:
    """Long-running scorer of one consumer group member."""

    def __init__(self, settings: WorkerSettings, metrics: PipelineMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or PipelineMetrics()
        self.device = resolve_device(settings.device)
        self.started_ms = int(time.time() * 1000)  # announcements from here on are heard
        self.models = ServedModels(settings, self.metrics, self.device)  # ArtifactError: exit 3
        self.processor = BatchProcessor(
            Topics(settings.alert_topic, settings.dlq_topic, settings.scores_topic),
            self.metrics,
            include_record=settings.include_record,
            drift=DriftMonitor(self.metrics, settings.drift_half_life_records),
        )
        self.processor.drift.use_model(self.model.artifact.manifest)
        self.shadow_scorer = ShadowScorer(settings.shadow_topic, self.metrics)
        self.start_positions = StartPositions(settings.start_from, settings.start_timestamp_ms)
        self.assignment = Assignment(
            self._on_lost, self.start_positions.assigned, self.start_positions.revoked
        )
        self.retry = RetryPolicy(settings.max_batch_retries, settings.retry_backoff_s)
        self.txn_ids = TransactionalIds(
            settings.delivery, settings.group_id, settings.transactional_id
        )
        self.recovery = ProducerRecovery(self.txn_ids.current)
        self.stop_event = threading.Event()
        self._collector: BatchCollector | None = None
        self._last_beat = time.monotonic()
        self._sink: OutputSink | None = None
        self._committed: dict[TopicPartition, int] = {}  # what this worker committed last
        self.metrics.kafka_wait.set_function(self.kafka_wait_s)

    @property
    def model(self) -> ModelHandle:
        """The live model being served."""
        return self.models.model

    # --------------------------------------------------------------- public
    def run(
        self, max_batches: int | None = None, idle_timeout_s: float | None = None
    ) -> RunSummary:
        """Consume until stopped, ``max_batches`` processed, or idle for ``idle_timeout_s``."""
        summary = RunSummary()
        with ExitStack() as stack:
            self._start_metrics_server(stack)  # first: /healthz answers while clients bootstrap
            self._beat()
            if self.settings.create_topics:
                s = self.settings
                ensure_topics(
                    s.kafka, s.output_topics, s.topic_partitions,
                    TopicDurability(s.topic_replication, s.topic_min_insync_replicas),
                )  # fmt: skip
            stack.enter_context(torch_threads(self.settings.torch_threads))
            consumer = consumers.subscribe(self.settings, self.assignment)
            self.start_positions.bind(consumer)
            self.assignment.bind(consumer.group_metadata)
            stack.callback(consumers.close_consumer, consumer)
            stack.callback(self.txn_ids.release)  # after the producer is closed
            sink = OutputSink(
                self._make_producer,
                self.settings.delivery,
                txn_deadline_s=self.settings.transaction_timeout_ms / 1000,
            )
            self._sink = sink
            stack.callback(sink.close)
            _ = sink.producer  # connect now: bad credentials fail at start, not at batch one
            self._start_announcements(stack)
            self._loop(consumer, sink, summary, max_batches, idle_timeout_s)
        log.info("worker stopped", extra=summary.as_dict())
        return summary

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and leave (signal-safe)."""
        self.stop_event.set()

    def is_ready(self) -> bool:
        return bool(self.assignment.partitions) and self.models.live.current is not None

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
        collector = BatchCollector(
            consumer,
            s.batch.max_size,
            s.batch.max_wait_ms / 1000,
            should_stop=self.stop_event.is_set,
        )
        self._collector = collector
        idle = IdleClock(idle_timeout_s)
        while not self.stop_event.is_set():
            self._beat()
            self.models.maybe_reload()
            self.start_positions.settle()
            try:
                batch = collector.collect()
            except KafkaError as exc:
                # records gathered before the error were never processed: read them again
                consumers.rewind(consumer, collector.abandoned)
                self._failed(exc, [], sink)
                continue
            self.metrics.ready.set(1 if self.is_ready() else 0)
            if batch is None:
                if idle.expired(has_partitions=bool(consumer.assignment())):
                    log.info("idle timeout reached", extra={"idle_timeout_s": idle_timeout_s})
                    break
                continue
            self._process_with_retry(batch.records, consumer, sink, summary)
            self._update_lag(consumer)
            idle.activity()
            if max_batches is not None and summary.batches >= max_batches:
                break
        self._collector = None

    def _process_with_retry(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        """Process a batch; on failure rewind so the next collect() re-reads it, with backoff."""
        try:
            self._process_once(records, consumer, sink, summary)
            self.retry.succeeded()
        except CommitRejected as exc:
            self._commit_rejected(exc, records, consumer, sink)
        except (PipelineError, KafkaError) as exc:
            reason = rebuild_reason(exc) if sink.mode == "exactly-once" else None
            if reason is not None:
                self._rebuild_producer(reason, exc, records, consumer, sink)
                return
            sink.abort()
            self._failed(exc, records, sink)
            consumers.rewind(consumer, records)

    def _process_once(
        self, records: list[Any], consumer: KafkaConsumer, sink: OutputSink, summary: RunSummary
    ) -> None:
        started = time.perf_counter()
        # the membership the batch was polled in: that of the assignment in force, not
        # consumer.group_metadata(), which a join in flight moves on before the assignment
        group = self.assignment.membership
        live = self.model
        sink.begin()
        result = self.processor.process(records, live, sink)
        shadow = self._score_shadow(records, sink)
        offsets = next_offsets(records)
        sink.commit(consumer, offsets, group)
        self._committed.update({tp: om.offset for tp, om in offsets.items()})
        self.processor.observe(result)  # only now: a failed attempt must not count
        if shadow is not None:
            self.shadow_scorer.observe(shadow)
        m = self.metrics
        observe_end_to_end(m, records, time.time() * 1000)
        m.batches.inc()
        m.commits.inc()
        m.model_scored.labels(role="live", version=live.version).inc(result.scored)
        m.model_anomalies.labels(role="live", version=live.version).inc(result.anomalies)
        summary.add(result, time.perf_counter() - started)

    def _commit_rejected(
        self, exc: CommitRejected, records: list[Any], consumer: KafkaConsumer, sink: OutputSink
    ) -> None:
        """The group moved on while the batch was processed: not a failure (no retry counted,
        no backoff). At-least-once the output is durable and whoever owns the partitions next
        replays from the last commit. Exactly-once the transaction was aborted, so the batch
        is read again from the last commit, by whoever owns its partitions after a fresh join
        (``rejoin_fresh``: every position is re-read from the committed offsets)."""
        self.retry.succeeded()
        self.metrics.commits_rejected.inc()
        if sink.mode == "exactly-once":
            consumers.rejoin_fresh(consumer, self.settings, self.assignment)
        else:
            consumers.rejoin(consumer)
        log.warning(
            "offset commit refused after a rebalance; the batch is replayed",
            extra={"batch": describe_batch(records), "delivery": sink.mode, "error": str(exc)},
        )

    def _rebuild_producer(
        self,
        reason: RebuildReason,
        exc: BaseException,
        records: list[Any],
        consumer: KafkaConsumer,
        sink: OutputSink,
    ) -> None:
        """The transactional producer was fenced or stalled: close it (the next batch's
        ``init_transactions`` with the same id fences what is left of it) and re-read every
        partition from the committed offsets, which is where the last committed transaction
        ended whatever became of this one (the group membership is kept: if it moved on
        meanwhile, the next commit is refused and the consumer rejoins). Too many rebuilds
        raise KafkaFatalError."""
        self.recovery.allow(reason, exc, describe_batch(records) if records else "polling")
        self.metrics.producer_rebuilds.labels(reason=reason).inc()
        sink.reset()
        try:
            positions = consumers.rewind_to_committed(consumer, self._committed)
        except KafkaError as error:
            log.warning("cannot fetch committed offsets, rejoining", extra={"error": repr(error)})
            consumers.rejoin_fresh(consumer, self.settings, self.assignment)
            return
        log.info("re-reading from the committed offsets", extra={"positions": _fmt(positions)})

    def _failed(self, exc: BaseException, records: list[Any], sink: OutputSink) -> None:
        """Count the failure, replace a failed producer and back off (or raise: see retry)."""
        stage = stage_of(exc)
        self.metrics.batch_failures.labels(stage=stage).inc()
        where = describe_batch(records) if records else "polling"
        delay = self.retry.failed(exc, stage, where)
        if is_kafka_failure(exc):
            sink.reset()  # an idempotent/transactional producer that failed refuses all sends
        self._wait(delay)

    # --------------------------------------------------------------- pieces
    def _score_shadow(self, records: list[Any], sink: OutputSink) -> ShadowResult | None:
        """Run the shadow model; its failure never fails the live batch (its sends do: they
        are part of the batch's output and transaction)."""
        shadow = self.models.shadow_model
        if shadow is None:
            return None
        try:
            return self.shadow_scorer.process(records, shadow, sink)
        except KafkaIOError:
            raise
        except (PipelineError, RuntimeError, ValueError) as exc:
            self.metrics.shadow_failures.inc()
            log.warning(
                "shadow model failed on a batch",
                extra={
                    "version": shadow.version,
                    "batch": describe_batch(records),
                    "error": repr(exc),
                },
            )
            return None

    def _on_lost(self, lost: set[TopicPartition]) -> None:
        """Partitions now owned by another member: their records in the batch being collected
        would duplicate the new owner's work (it starts from the last commit)."""
        if self._collector is not None:
            dropped = self._collector.drop_partitions(lost)
            if dropped:
                self.metrics.records_revoked.inc(dropped)
                log.info(
                    "dropped lost partitions' records from the batch being collected",
                    extra={"records": dropped, "partitions": fmt_partitions(lost)},
                )
        for tp in lost:
            with suppress(KeyError):
                self.metrics.consumer_lag.remove(f"{tp.topic}-{tp.partition}")

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

    def _start_metrics_server(self, stack: ExitStack) -> None:
        s = self.settings
        if s.metrics_port:
            server = MetricsServer(
                self.metrics.registry,
                s.metrics_host,
                s.metrics_port,
                is_ready=self.is_ready,
                is_alive=self.is_alive,
                health_note=self.health_note,
            ).start()
            stack.callback(server.stop)

    def _start_announcements(self, stack: ExitStack) -> None:
        if self.settings.announce_topic:
            announcer = AnnounceListener(
                self.settings.kafka,
                self.settings.announce_topic,
                self.models.slots,
                on_record=lambda r: self.metrics.announcements.labels(result=r).inc(),
                since_ms=self.started_ms,
            ).start()
            stack.callback(announcer.stop)

    def _make_producer(self) -> KafkaProducer:
        txn_id = self.txn_ids.current()
        if txn_id is None:
            return make_producer(self.settings.kafka)
        timeout_ms = self.settings.transaction_timeout_ms
        return make_producer(
            self.settings.kafka, transactional_id=txn_id, transaction_timeout_ms=timeout_ms
        )

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        for tp, behind in consumers.lag(consumer, self.assignment.partitions).items():
            self.metrics.consumer_lag.labels(partition=f"{tp.topic}-{tp.partition}").set(behind)


def _fmt(positions: dict[TopicPartition, int]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]={off}" for tp, off in positions.items())
