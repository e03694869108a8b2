"""One micro-batch from consumed records to produced output: decode, score, alert, dead-letter.

Kept free of the consume/commit loop so it can be reused by batch scoring and tested alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np

from pipeline.alerts import build_event, encode_event, utc_now_iso
from pipeline.codec import CONTENT_TYPE_HEADER, DecodedBatch, Rejection
from pipeline.deadletter import dead_letter_headers
from pipeline.drift import DriftMonitor
from pipeline.metrics import PipelineMetrics
from pipeline.scoring import BatchScores
from pipeline.serving import ModelHandle

Headers = list[tuple[str, bytes]]


class Sink(Protocol):
    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Topics:
    alerts: str
    dead_letter: str
    scores: str | None = None


@dataclass(frozen=True)
class BatchResult:
    consumed: int
    scored: int
    anomalies: int
    rejected: int
    inference_s: float


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
        values = [r.value for r in records]
        decoded = model.decoder.decode(values, [_content_type(r.headers) for r in records])
        for rejection in decoded.rejected:
            self._dead_letter(records[rejection.index], rejection, model, sink)
        started = time.perf_counter()
        scores = model.scorer.score(decoded.cont, decoded.cat)
        inference_s = time.perf_counter() - started
        self.drift.observe(model.artifact.manifest, scores.scores)
        anomalies = self._emit(records, decoded, scores, model, sink)
        self._observe(len(records), decoded, scores, anomalies, inference_s)
        return BatchResult(
            consumed=len(records),
            scored=len(scores),
            anomalies=anomalies,
            rejected=len(decoded.rejected),
            inference_s=inference_s,
        )

    def _emit(
        self,
        records: list[Any],
        decoded: DecodedBatch,
        scores: BatchScores,
        model: ModelHandle,
        sink: Sink,
    ) -> int:
        threshold = model.threshold
        over = scores.scores > threshold
        rows = range(len(scores)) if self.topics.scores else np.flatnonzero(over).tolist()
        if not len(rows):
            return 0
        detected_at = utc_now_iso()
        names = model.spec.unit_names
        n_units = model.spec.n_units
        ref = (model.name, model.version)
        for j in rows:
            rec = records[decoded.accepted[j]]
            score = float(scores.scores[j])
            event = build_event(
                source=(rec.topic, rec.partition, rec.offset, rec.timestamp),
                key=rec.key,
                record_id=decoded.record_ids[j],
                score=score,
                threshold=threshold,
                model=ref,
                top_features=[
                    (names[int(u)], float(e))
                    for u, e in zip(scores.top_index[j], scores.top_error[j], strict=True)
                ],
                total_error=score * n_units,
                detected_at=detected_at,
                record=_record_copy(rec.value) if self.include_record and over[j] else None,
            )
            payload = encode_event(event)
            if over[j]:
                sink.send(self.topics.alerts, payload, key=rec.key)
            if self.topics.scores:
                sink.send(self.topics.scores, payload, key=rec.key)
        return int(over.sum())

    def _dead_letter(self, rec: Any, rejection: Rejection, model: ModelHandle, sink: Sink) -> None:
        headers = dead_letter_headers(
            reason=rejection.reason.value,
            detail=rejection.detail,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            timestamp=rec.timestamp,
            model=f"{model.name}/{model.version}",
            original=rec.headers or [],
        )
        sink.send(self.topics.dead_letter, rec.value or b"", key=rec.key, headers=headers)
        self.metrics.records_invalid.labels(reason=rejection.reason.value).inc()

    def _observe(
        self,
        consumed: int,
        decoded: DecodedBatch,
        scores: BatchScores,
        anomalies: int,
        inference_s: float,
    ) -> None:
        m = self.metrics
        m.records_consumed.inc(consumed)
        m.records_scored.inc(len(scores))
        m.anomalies.inc(anomalies)
        m.batch_size.observe(consumed)
        m.inference_seconds.observe(inference_s)
        for s in scores.scores.tolist():
            m.score.observe(s)


def _content_type(headers: Any) -> str | None:
    for k, v in headers or ():
        if k == CONTENT_TYPE_HEADER:
            return bytes(v).decode("ascii", "replace")
    return None


def _record_copy(value: bytes | None) -> dict[str, Any] | None:
    """The input record for an alert; None when it is not a JSON object (binary path)."""
    try:
        obj = msgspec.json.decode(value or b"")
    except msgspec.DecodeError:
        return None
    return obj if isinstance(obj, dict) else None
