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

from pipeline.alerts import build_event, encode_event, utc_now_iso
from pipeline.codec import CONTENT_TYPE_HEADER
from pipeline.metrics import PipelineMetrics
from pipeline.processing import Sink
from pipeline.scoring import BatchScores
from pipeline.serving import ModelHandle


class ShadowScorer:
    """Runs one batch through the shadow model; returns how many records it scored."""

    def __init__(self, topic: str | None, metrics: PipelineMetrics) -> None:
        self.topic = topic
        self.metrics = metrics

    def process(self, records: list[Any], model: ModelHandle, sink: Sink) -> int:
        decoded = model.decoder.decode(
            [r.value for r in records], [_content_type(r.headers) for r in records]
        )
        m = self.metrics
        for rejection in decoded.rejected:
            m.shadow_invalid.labels(reason=rejection.reason.value).inc()
        scores = model.scorer.score(decoded.cont, decoded.cat)
        over = scores.scores > model.threshold
        m.model_scored.labels(role="shadow", version=model.version).inc(len(scores))
        m.model_anomalies.labels(role="shadow", version=model.version).inc(int(over.sum()))
        histogram = m.shadow_score.labels(version=model.version)
        for value in scores.scores.tolist():
            histogram.observe(value)
        if self.topic and len(scores):
            self._emit(
                self.topic, records, decoded.accepted, decoded.record_ids, scores, model, sink
            )
        return len(scores)

    def _emit(
        self,
        topic: str,
        records: list[Any],
        accepted: list[int],
        record_ids: list[str | None],
        scores: BatchScores,
        model: ModelHandle,
        sink: Sink,
    ) -> None:
        names = model.spec.unit_names
        n_units = model.spec.n_units
        detected_at = utc_now_iso()
        ref = (model.name, model.version)
        for j, index in enumerate(accepted):
            rec = records[index]
            score = float(scores.scores[j])
            event = build_event(
                source=(rec.topic, rec.partition, rec.offset, rec.timestamp),
                key=rec.key,
                record_id=record_ids[j],
                score=score,
                threshold=model.threshold,
                model=ref,
                top_features=[
                    (names[int(u)], float(e))
                    for u, e in zip(scores.top_index[j], scores.top_error[j], strict=True)
                ],
                total_error=score * n_units,
                detected_at=detected_at,
            )
            sink.send(topic, encode_event(event), key=rec.key)


def _content_type(headers: Any) -> str | None:
    for key, value in headers or ():
        if key == CONTENT_TYPE_HEADER:
            return bytes(value).decode("ascii", "replace")
    return None
