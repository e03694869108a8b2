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

from typing import Any

from pipeline.worker.events import EventTopics, Sink, emit_events
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.serving import ModelHandle


class ShadowScorer:
    """Runs one batch through the shadow model; returns how many records it scored."""

    def __init__(self, topic: str | None, metrics: PipelineMetrics) -> None:
        self.topics = EventTopics(alerts=None, scores=topic)
        self.metrics = metrics

    def process(self, records: list[Any], model: ModelHandle, sink: Sink) -> int:
        decoded = model.decoder.decode_records(records)
        m = self.metrics
        for rejection in decoded.rejected:
            m.shadow_invalid.labels(reason=rejection.reason.value).inc()
        scored = model.score(decoded)
        anomalies = emit_events(records, decoded, scored, model, sink, self.topics)
        m.model_scored.labels(role="shadow", version=model.version).inc(len(scored))
        m.model_anomalies.labels(role="shadow", version=model.version).inc(anomalies)
        histogram = m.shadow_score.labels(version=model.version)
        for value in scored.monitored.tolist():
            histogram.observe(value)
        return len(scored)
