"""One micro-batch from consumed records to produced output: decode, score, alert, dead-letter.

Kept free of the consume/commit loop so it can be reused by batch scoring and tested alone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.contract.artifact import Manifest
from pipeline.contract.bounds import bounded_key
from pipeline.contract.deadletter import OUTPUT_TOO_LARGE, dead_letter_headers, dead_letter_value
from pipeline.contract.verdict import NON_FINITE_SCORE, OVER_THRESHOLD
from pipeline.worker.drift import DriftMonitor
from pipeline.worker.events import EventTopics, Sink, emit_events
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.serving import ModelHandle


@dataclass(frozen=True)
class Topics:
    alerts: str
    dead_letter: str
    scores: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """What one attempt at a batch produced. Its metrics are applied by ``observe`` once the
    batch is committed, so a retried batch counts once, not once per attempt."""

    consumed: int
    scored: int
    anomalies: int
    rejected: int
    inference_s: float
    scores: np.ndarray[Any, Any] = field(default_factory=lambda: np.zeros(0))
    reasons: tuple[str, ...] = ()  # dead-letter reason of each rejected record
    manifest: Manifest | None = None  # the model that scored it, for the drift monitor
    fallback: int | None = None  # per-entity versions: records the fallback scored
    non_finite: int = 0  # anomalies because the score was NaN or infinite


class BatchProcessor:
    """Turns a list of consumer records into sends on a sink."""

    def __init__(
        self,
        topics: Topics,
        metrics: PipelineMetrics,
        include_record: bool = False,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.topics = topics
        self.metrics = metrics
        self.include_record = include_record
        self.drift = drift if drift is not None else DriftMonitor(metrics)

    def process(self, records: list[Any], model: ModelHandle, sink: Sink) -> BatchResult:
        """Decode, score, and send the batch's alerts / dead letters / scores to ``sink``."""
        decoded = model.decoder.decode_records(records)
        for rejection in decoded.rejected:
            rec = records[rejection.index]
            self._dead_letter(rec, rejection.reason.value, rejection.detail, model, sink)
        started = time.perf_counter()
        scored = model.score(decoded)
        inference_s = time.perf_counter() - started
        events = EventTopics(self.topics.alerts, self.topics.scores, self.include_record)
        emitted = emit_events(records, decoded, scored, model, sink, events)
        for refused in emitted.too_large:
            detail = f"{refused.topic}: {refused.detail}"
            self._dead_letter(records[refused.index], OUTPUT_TOO_LARGE, detail, model, sink)
        return BatchResult(
            consumed=len(records),
            scored=len(scored),
            anomalies=emitted.anomalies,
            rejected=len(decoded.rejected) + len(emitted.too_large),
            inference_s=inference_s,
            scores=scored.monitored,
            reasons=tuple(r.reason.value for r in decoded.rejected)
            + (OUTPUT_TOO_LARGE,) * len(emitted.too_large),
            manifest=model.artifact.manifest,
            fallback=None if scored.slots is None else int((scored.slots == 0).sum()),
            non_finite=scored.non_finite,
        )

    def _dead_letter(
        self, rec: Any, reason: str, detail: str, model: ModelHandle, sink: Sink
    ) -> None:
        """Send ``rec`` to the dead-letter topic, every copied part within its bound."""
        value, truncated = dead_letter_value(rec.value)
        key = bounded_key(rec.key)
        headers = dead_letter_headers(
            reason=reason,
            detail=detail,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            timestamp=rec.timestamp,
            model=f"{model.name}/{model.version}",
            original=rec.headers or [],
            truncated=truncated,
            key_truncated=None if key is rec.key else len(rec.key),
        )
        sink.send(self.topics.dead_letter, value, key=key, headers=headers)

    def observe(self, result: BatchResult) -> None:
        """Count a batch in the metrics; the worker calls this after the batch's commit."""
        m = self.metrics
        m.records_consumed.inc(result.consumed)
        m.records_scored.inc(result.scored)
        m.anomalies.inc(result.anomalies)
        m.anomalies_by_reason.labels(reason=OVER_THRESHOLD).inc(
            result.anomalies - result.non_finite
        )
        m.anomalies_by_reason.labels(reason=NON_FINITE_SCORE).inc(result.non_finite)
        m.batch_size.observe(result.consumed)
        m.inference_seconds.observe(result.inference_s)
        m.score.observe_many(result.scores)
        for reason, n in Counter(result.reasons).items():
            m.records_invalid.labels(reason=reason).inc(n)
        if result.fallback is not None:
            m.entity_records.labels(model="fallback").inc(result.fallback)
            m.entity_records.labels(model="entity").inc(result.scored - result.fallback)
        if result.manifest is not None:
            self.drift.observe(result.manifest, result.scores)


def observe_end_to_end(metrics: PipelineMetrics, records: list[Any], now_ms: float) -> None:
    """Record each record's latency from its timestamp to ``now_ms``, in one histogram call.

    Records without a timestamp (None, or <= 0 from old producers) are left out.
    """
    stamps = np.fromiter(
        (-1 if r.timestamp is None else r.timestamp for r in records),
        dtype=np.float64,
        count=len(records),
    )
    stamps = stamps[stamps > 0]
    metrics.end_to_end_latency.observe_many(np.maximum(0.0, (now_ms - stamps) / 1000))
