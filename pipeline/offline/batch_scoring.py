"""Batch scoring: Parquet in, one scored row per input row out, with the worker's own code.

``python -m pipeline score`` serves backfills, replays and a candidate model's dry run (how many
alerts would it raise?). Rows are encoded with ``pipeline.contract.tabular`` and scored with
``pipeline.contract.scoring.Scorer`` exactly as the trainer and the worker do, so a row gets the
same score here as on the stream. Memory stays bounded: the input is read as a stream of Arrow
record batches and each scored batch goes straight to a ``ParquetWriter``; the output is written
to a temporary file and renamed into place when complete.

Output columns: the spec's id column (or ``row``, the input position, when the model has
none), ``score`` (float64), ``is_anomaly`` (score > threshold, or a score that is not finite:
``pipeline.contract.verdict``, as the worker decides) and ``top_features``
(list of {name, error, share}, as in the alert event).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from pipeline.contract.artifact import LoadedArtifact, load_artifact
from pipeline.contract.entities import entity_key
from pipeline.contract.entity_scoring import EntityRouter, RoutedScores, open_entity_scorer
from pipeline.contract.exceptions import DataError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.scoring import BatchScores, Scorer, resolve_device
from pipeline.contract.tabular import encode_record_batch
from pipeline.contract.verdict import is_anomalous

ROW_COLUMN = "row"
TOP_FEATURE_TYPE = pa.struct(
    [("name", pa.string()), ("error", pa.float64()), ("share", pa.float64())]
)


@dataclass(frozen=True)
class ScoreSummary:
    """What a batch scoring run did; ``alert_rate`` is the share of rows over the threshold."""

    rows: int
    anomalies: int
    threshold: float
    quantile: float
    model: str
    version: str
    out: str
    seconds: float

    @property
    def alert_rate(self) -> float:
        return self.anomalies / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "anomalies": self.anomalies,
            "alert_rate": round(self.alert_rate, 6),
            "expected_rate_on_normal_data": round(1 - self.quantile, 6),
            "threshold": self.threshold,
            "model": self.model,
            "version": self.version,
            "out": self.out,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else 0.0,
        }


def score_parquet(
    data: str,
    out: str | Path,
    model_store: str,
    name: str,
    version: str | None = None,
    *,
    device: str = "auto",
    top_k: int = 3,
    batch_rows: int = 65_536,
    on_batch: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every row of ``data`` (a Parquet file or a directory of them) into ``out``."""
    started = time.perf_counter()
    artifact = load_artifact(model_store, name, version)
    manifest = artifact.manifest
    dataset = _open(data)
    scorer = _TableScorer(artifact, resolve_device(device), top_k, dataset.schema)
    missing = [c for c in scorer.columns if c not in dataset.schema.names]
    if missing:
        raise DataError(f"{data}: columns missing from the data: {missing}")
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    rows = anomalies = 0
    writer: pq.ParquetWriter | None = None
    try:
        for rb in _batches(dataset, scorer.columns, batch_rows, data):
            if rb.num_rows == 0:
                continue
            table = scorer.table(rb, rows)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
            anomalies += int(np.count_nonzero(table.column("is_anomaly").to_numpy()))
            if on_batch is not None:
                on_batch(rows)
        if writer is None:  # no rows: still write a file with the output schema
            table = scorer.empty()
            writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return ScoreSummary(
        rows=rows,
        anomalies=anomalies,
        threshold=manifest.threshold.value,
        quantile=manifest.threshold.quantile,
        model=manifest.name,
        version=manifest.version,
        out=str(out_path),
        seconds=time.perf_counter() - started,
    )


class _TableScorer:
    """Scores Arrow batches into output tables with the version's scorer: ``Scorer``, or
    ``EntityScorer`` routing rows by the entity column for a per-entity version."""

    def __init__(
        self, artifact: LoadedArtifact, device: torch.device, top_k: int, schema: pa.Schema
    ) -> None:
        self.spec = artifact.manifest.features
        self.threshold = artifact.manifest.threshold.value
        ents = artifact.entities
        self.scorer = Scorer(self.spec, artifact.model, device, top_k=top_k)
        self.routed = (
            open_entity_scorer(self.spec, ents, device, top_k=top_k) if ents is not None else None
        )
        self.id_column = _id_column(self.spec, schema)
        self.id_type = schema.field(self.id_column).type if self.id_column else pa.int64()
        self.entity_column = ents.info.column if ents is not None else None
        wanted = [*self.spec.column_names, self.id_column, self.entity_column]
        self.columns = list(dict.fromkeys(c for c in wanted if c))

    def table(self, rb: pa.RecordBatch, first_row: int) -> pa.Table:
        cont, cat = encode_record_batch(rb, self.spec)
        n = len(cont)
        ids = (
            rb.column(self.id_column)
            if self.id_column
            else pa.array(np.arange(first_row, first_row + n))
        )
        name = self.id_column or ROW_COLUMN
        if self.routed is None or self.entity_column is None:
            return output_table(ids, name, self.scorer.score(cont, cat), self.threshold, self.spec)
        keys = [entity_key(v) for v in rb.column(self.entity_column).to_pylist()]
        result = self.routed.score(cont, cat, keys)
        table = output_table(ids, name, result.scores, result.thresholds, self.spec)
        return _with_entity_columns(table, result, self.routed.router)

    def empty(self) -> pa.Table:
        empty = _empty_scores(self.scorer.top_k)
        ids = pa.array([], self.id_type)
        table = output_table(ids, self.id_column or ROW_COLUMN, empty, self.threshold, self.spec)
        return (
            table if self.routed is None else _with_entity_columns(table, None, self.routed.router)
        )


def output_table(
    ids: pa.Array,
    id_name: str,
    scores: BatchScores,
    threshold: float | np.ndarray[Any, Any],
    spec: FeatureSpec,
) -> pa.Table:
    """One output batch: id, score, is_anomaly, top_features (shares as in the alert);
    ``threshold`` is one value, or one per row for per-entity models."""
    score = scores.scores.astype(np.float64)  # (B,) exact widening of the float32 scores
    n, k = scores.top_index.shape
    error = scores.top_error.astype(np.float64)  # (B, k)
    total = (score * spec.n_units)[:, None]  # (B, 1) as build_event computes it
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, np.minimum(1.0, error / total), 0.0)
    # as in the alert: a non-finite error has all of a non-finite total, a finite one none
    share = np.where(np.isfinite(error), np.nan_to_num(share, nan=0.0), 1.0)
    names = np.asarray(spec.unit_names, dtype=object)[scores.top_index.reshape(-1)]
    top = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32) if n else np.zeros(1, np.int32)),
        pa.StructArray.from_arrays(
            [
                pa.array(names, pa.string()),
                pa.array(error.reshape(-1)),
                pa.array(share.reshape(-1)),
            ],
            fields=list(TOP_FEATURE_TYPE),
        ),
    )
    return pa.table(
        {
            id_name: ids,
            "score": pa.array(score),
            "is_anomaly": pa.array(is_anomalous(score, threshold)),
            "top_features": top,
        }
    )


def _with_entity_columns(
    table: pa.Table, result: RoutedScores | None, router: EntityRouter
) -> pa.Table:
    """Per-entity versions: each row's threshold and the entity whose model scored it
    (``entity_model`` null: the fallback), as the alert's ``model.entity`` says."""
    if result is None:
        return table.append_column("threshold", pa.array([], pa.float64())).append_column(
            "entity_model", pa.array([], pa.string())
        )
    assert result.slots is not None  # an EntityScorer always says which slot scored a row
    names = [router.entity_of(s) for s in result.slots.tolist()]
    return table.append_column("threshold", pa.array(result.thresholds)).append_column(
        "entity_model", pa.array(names, pa.string())
    )


def _open(data: str) -> ds.Dataset:
    try:
        return ds.dataset(data, format="parquet")
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read Parquet data {data}: {exc}") from exc


def _batches(
    dataset: ds.Dataset, columns: list[str], batch_rows: int, data: str
) -> Iterator[pa.RecordBatch]:
    try:
        yield from dataset.to_batches(columns=columns, batch_size=batch_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read Parquet data {data}: {exc}") from exc


def _id_column(spec: FeatureSpec, schema: pa.Schema) -> str | None:
    """The spec's id column; a model trained with one needs it in the data."""
    if spec.id_column is None:
        return None
    if spec.id_column not in schema.names:
        raise DataError(f"id column {spec.id_column!r} of the model is not in the data")
    return spec.id_column


def _empty_scores(top_k: int) -> BatchScores:
    return BatchScores(
        scores=np.zeros(0, np.float32),
        top_index=np.zeros((0, top_k), np.int64),
        top_error=np.zeros((0, top_k), np.float32),
    )
