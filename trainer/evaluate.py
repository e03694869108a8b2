"""Evaluation of a published model on labelled rows: scores, labels and detection metrics.

Rows are read from Parquet in bounded batches, encoded with ``pipeline.contract.tabular`` and scored
with ``pipeline.contract.scoring.Scorer``: the same code the worker and the threshold use, so the
numbers here are the numbers production would see.

Label convention: by default a label is an anomaly when it is ``true`` or ``1`` (boolean,
integer, float or the strings "true"/"1", any case) and normal when it is ``false`` or ``0``;
any other value is an error that names it. With ``anomaly_values`` (``--anomaly-value``,
repeatable) a row is an anomaly when its label equals one of them (compared as text, so
``--anomaly-value malignant`` or ``--anomaly-value 7``) and normal otherwise. A null label is
always an error: an unlabelled row cannot be counted either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.contract.artifact import LoadedArtifact, Manifest, load_artifact
from pipeline.contract.entities import entity_key
from pipeline.contract.entity_scoring import open_entity_scorer
from pipeline.contract.exceptions import DataError
from pipeline.contract.features import category_key
from pipeline.contract.scoring import Scorer, resolve_device
from pipeline.contract.tabular import encode_record_batch
from pipeline.contract.verdict import non_finite
from trainer import detection_metrics
from trainer.calibration import rate_interval
from trainer.data import ParquetSource

log = logging.getLogger(__name__)

_ANOMALY_TEXT = frozenset({"1", "true"})
_NORMAL_TEXT = frozenset({"0", "false"})
_LOGGED = ("roc_auc", "pr_auc", "precision", "recall", "f1", "rows", "anomalies", "data")


@dataclass(frozen=True)
class EvaluationRequest:
    data: str
    model_store: str
    name: str
    label_column: str | None = None  # None: the label column recorded at training time
    version: str | None = None  # None: LATEST
    anomaly_values: tuple[str, ...] = ()
    device: str = "auto"
    batch_rows: int = 65_536


@dataclass(frozen=True)
class Evaluation:
    """Scores and labels of every row, the metrics, and the model they came from."""

    manifest: Manifest
    data: str
    label_column: str
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    roc_auc: float
    pr_auc: float
    at_threshold: detection_metrics.ThresholdMetrics
    fallback_rows: int | None = None  # per-entity versions: rows the fallback scored

    @property
    def threshold(self) -> float:
        """What ``scores`` are compared with: the published threshold, or 1 for a per-entity
        version, whose scores are relative to each row's own model's threshold."""
        return self.manifest.threshold.value if self.fallback_rows is None else 1.0

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints: headline numbers first, then counts and provenance."""
        t = self.at_threshold
        n_anom = int(self.labels.sum())
        out: dict[str, Any] = {
            "roc_auc": round(self.roc_auc, 6),
            "pr_auc": round(self.pr_auc, 6),
            "threshold": self.threshold,
            "threshold_quantile": self.manifest.threshold.quantile,
            "precision": round(t.precision, 6),
            "recall": round(t.recall, 6),
            "f1": round(t.f1, 6),
            "false_positive_rate": round(t.false_positive_rate, 6),
            "false_positive_rate_90": [round(v, 6) for v in rate_interval(t.fp, t.fp + t.tn)],
            **expected_false_alarms(self.manifest),
            "confusion": {"tp": t.tp, "fp": t.fp, "tn": t.tn, "fn": t.fn},
            "rows": int(self.labels.size),
            "anomalies": n_anom,
            "normals": int(self.labels.size) - n_anom,
            # flagged whatever the threshold (the model overflowed on them), ranked highest
            "non_finite_scores": int(non_finite(self.scores).sum()),
            "model": {
                "name": self.manifest.name,
                "version": self.manifest.version,
                "kind": self.manifest.model.kind,
            },
            "data": self.data,
            "label_column": self.label_column,
        }
        if self.fallback_rows is not None and self.manifest.entities is not None:
            out["scores"] = "relative: each row's score divided by its own model's threshold"
            out["entity_models"] = self.manifest.entities.models
            out["fallback_rows"] = self.fallback_rows
        return out


def expected_false_alarms(manifest: Manifest) -> dict[str, Any]:
    """What the threshold promised at training time (the rate on normal rows, with its 90%
    interval), to set beside the false-positive rate measured here."""
    t = manifest.threshold
    if t.expected_false_alarm_rate is None:
        return {"expected_false_alarm_rate": None}
    return {
        "expected_false_alarm_rate": round(t.expected_false_alarm_rate, 6),
        "expected_false_alarm_rate_90": [round(v, 6) for v in t.false_alarm_rate_interval or ()],
        "calibration_rows": t.rows,
    }


def evaluate(request: EvaluationRequest) -> Evaluation:
    """Load the model, score every labelled row and compute the metrics."""
    loaded = load_artifact(request.model_store, request.name, request.version)
    source = ParquetSource(request.data, batch_rows=request.batch_rows)
    label_column = resolve_label_column(request.label_column, loaded.manifest, source)
    scored = score_labelled(loaded, source, label_column, request.anomaly_values, request.device)
    scores, labels = scored.ranking, scored.labels
    threshold = loaded.manifest.threshold.value if loaded.entities is None else 1.0
    result = Evaluation(
        manifest=loaded.manifest,
        data=request.data,
        label_column=label_column,
        scores=scores,
        labels=labels,
        roc_auc=detection_metrics.roc_auc(scores, labels),
        pr_auc=detection_metrics.average_precision(scores, labels),
        at_threshold=detection_metrics.at_threshold(scores, labels, threshold),
        fallback_rows=scored.fallback_rows,
    )
    summary = result.summary()
    log.info("evaluated", extra={k: summary[k] for k in _LOGGED})
    return result


def resolve_label_column(given: str | None, manifest: Manifest, source: ParquetSource) -> str:
    """The label column to use; it must be in the data and must not be a model feature."""
    column = given or manifest.features.label_column
    if not column:
        raise DataError("no label column: pass --label-column (the model was trained without one)")
    if column not in source.schema.names:
        raise DataError(
            f"label column {column!r} not in {source.location!r} (available: {source.schema.names})"
        )
    if column in manifest.features.column_names:
        raise DataError(
            f"label column {column!r} is an input feature of model "
            f"{manifest.name}/{manifest.version}; evaluating on it would leak the answer"
        )
    return column


@dataclass(frozen=True)
class Scored:
    """Every row's score (as the worker computes it), label and, for a per-entity version,
    the threshold of the model that scored it."""

    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    thresholds: npt.NDArray[np.float64] | None = None
    fallback_rows: int | None = None

    @property
    def ranking(self) -> npt.NDArray[np.float64]:
        """Scores comparable across rows: raw for one model, divided by each row's own
        threshold for per-entity models (each has its own scale)."""
        return self.scores if self.thresholds is None else self.scores / self.thresholds


def score_labelled(
    loaded: LoadedArtifact,
    source: ParquetSource,
    label_column: str,
    anomaly_values: Sequence[str] = (),
    device: str = "auto",
) -> Scored:
    """(score, is_anomaly) of every row, in file order, through the shared encoder and scorer
    (``EntityScorer`` for a per-entity version, routing rows by their entity column)."""
    spec = loaded.manifest.features
    ents = loaded.entities
    dev = resolve_device(device)
    entity_column = [ents.info.column] if ents is not None else []
    if ents is not None and ents.info.column not in source.schema.names:
        raise DataError(f"entity column {ents.info.column!r} not in {source.location!r}")
    scorer = Scorer(spec, loaded.model, dev, top_k=0) if ents is None else None
    routed = open_entity_scorer(spec, ents, dev, top_k=0) if ents is not None else None
    columns = [*spec.column_names, label_column, *entity_column]
    scores: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.bool_]] = []
    thresholds: list[npt.NDArray[np.float64]] = []
    fallback = 0
    for batch in source.batches(columns):
        label = batch.table.column(label_column)
        labels.append(anomaly_labels(label, label_column, anomaly_values))
        cont, cat = encode_record_batch(batch.table, spec)
        if scorer is not None:
            scores.append(scorer.score(cont, cat).scores.astype(np.float64))
            continue
        keys = [entity_key(v) for v in batch.table.column(entity_column[0]).to_pylist()]
        assert routed is not None
        result = routed.score(cont, cat, keys)
        scores.append(result.scores.scores.astype(np.float64))
        thresholds.append(result.thresholds)
        fallback += int(result.fallback.sum())
    if not scores:
        raise DataError(f"no rows in {source.location!r}")
    if routed is None:
        return Scored(np.concatenate(scores), np.concatenate(labels))
    return Scored(
        np.concatenate(scores), np.concatenate(labels), np.concatenate(thresholds), fallback
    )


def anomaly_labels(
    column: pa.Array, name: str, anomaly_values: Sequence[str] = ()
) -> npt.NDArray[np.bool_]:
    """True where the label marks an anomaly (see the module docstring for the convention)."""
    if column.null_count:
        raise DataError(f"label column {name!r} has {column.null_count} null values")
    text = np.asarray([category_key(v) for v in column.to_pylist()], dtype=str)
    if anomaly_values:
        return np.isin(text, [category_key(v) for v in anomaly_values])
    text = np.char.lower(text)
    known = np.isin(text, [*_ANOMALY_TEXT, *_NORMAL_TEXT])
    if not known.all():
        unknown = sorted(set(text[~known].tolist()))
        raise DataError(
            f"label column {name!r} has values {unknown[:5]} that are neither 1/true (anomaly) "
            f"nor 0/false (normal); name the anomalous ones with --anomaly-value"
        )
    return np.isin(text, list(_ANOMALY_TEXT))
