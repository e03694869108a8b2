"""Shadow scoring: a candidate model scores the same batches as the live one, on the side.

Its results go to metrics (``pipeline_model_records_scored_total{role="shadow"}``,
``pipeline_model_anomalies_total{role="shadow"}``, ``pipeline_shadow_score``) and, if
``PIPELINE_SHADOW_TOPIC`` is set, one score event per record it scored (the alert schema,
``model`` naming the shadow version), never to the alert or dead-letter topics. An operator
thus sees the alert volume a candidate would produce before promoting it.

The shadow decodes records with its own feature spec, so a candidate may read different
columns than the live model; records it rejects are only counted. This costs roughly one more
decode and forward pass per batch while a shadow is configured.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.worker.events import EventTopics, Sink, emit_events
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.serving import ModelHandle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowResult:
    """What the shadow model made of one attempt at a batch; counted by ``observe`` once the
    batch is committed (a retried batch counts once, like the live model's results)."""

    version: str
    scored: int
    anomalies: int
    scores: np.ndarray[Any, Any]
    reasons: tuple[str, ...]  # the shadow spec's rejection reason of each record it refused


class ShadowScorer:
    """Runs batches through the shadow model and counts what it did once they are committed."""

    def __init__(self, topic: str | None, metrics: PipelineMetrics) -> None:
        self.topics = EventTopics(alerts=None, scores=topic)
        self.metrics = metrics

    def process(self, records: list[Any], model: ModelHandle, sink: Sink) -> ShadowResult:
        """Score the batch and send its score events; the metrics wait for ``observe``."""
        decoded = model.decoder.decode_records(records)
        scored = model.score(decoded)
        emitted = emit_events(records, decoded, scored, model, sink, self.topics)
        for refused in emitted.too_large:  # the live path accounts for the record
            rec = records[refused.index]
            log.warning(
                "shadow score event too large to send, skipped",
                extra={
                    "record": f"{rec.topic}[{rec.partition}] offset={rec.offset}",
                    "topic": refused.topic,
                    "error": refused.detail,
                },
            )
        return ShadowResult(
            version=model.version,
            scored=len(scored),
            anomalies=emitted.anomalies,
            scores=scored.monitored,
            reasons=tuple(r.reason.value for r in decoded.rejected),
        )

    def observe(self, result: ShadowResult) -> None:
        """Count a committed batch's shadow results."""
        m = self.metrics
        for reason, n in Counter(result.reasons).items():
            m.shadow_invalid.labels(reason=reason).inc(n)
        m.model_scored.labels(role="shadow", version=result.version).inc(result.scored)
        m.model_anomalies.labels(role="shadow", version=result.version).inc(result.anomalies)
        histogram = m.shadow_score.labels(version=result.version)
        for value in result.scores.tolist():
            histogram.observe(value)
