"""Inferring the feature spec from a Parquet schema and one streaming statistics pass.

Kinds come from Arrow types (numbers -> numeric, bool -> boolean, strings/dictionaries ->
categorical, fixed-length numeric lists -> vector) and can be overridden. Statistics are
gathered over training rows only (validation rows never touch fitting), merged batch by batch
so memory does not grow with the data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.exceptions import DataError
from pipeline.features import (
    BooleanFeature,
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    VectorFeature,
    category_key,
)
from pipeline.tabular import column_values
from trainer.data import ParquetSource, split_mask

Kind = str  # "numeric" | "boolean" | "categorical" | "vector"


@dataclass(frozen=True)
class SpecOptions:
    id_column: str | None = None
    label_column: str | None = None
    ignore_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    max_categories: int = 50
    missing: str = "impute"
    validation_fraction: float = 0.2
    seed: int = 0


def column_kinds(schema: pa.Schema, opts: SpecOptions) -> dict[str, Kind]:
    """Feature columns and their kinds, in schema order; unsupported types are an error."""
    named = [c for c in (opts.id_column, opts.label_column, *opts.ignore_columns) if c]
    missing = [c for c in [*named, *opts.categorical_columns] if c not in schema.names]
    if missing:
        raise DataError(f"columns not in the data: {missing} (available: {schema.names})")
    kinds: dict[str, Kind] = {}
    for f in schema:
        if f.name in named:
            continue
        kinds[f.name] = "categorical" if f.name in opts.categorical_columns else _kind_of(f)
    if not kinds:
        raise DataError("no feature columns left after removing id, label and ignored columns")
    return kinds


def _kind_of(f: pa.Field) -> Kind:
    t = f.type
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "categorical"
    if (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)
    ):
        return "vector"
    raise DataError(
        f"column {f.name!r} has unsupported type {t}; drop it with --ignore-columns {f.name}"
    )


@dataclass
class _Moments:
    """Chan's parallel mean/variance, element-wise (width 1 for scalars)."""

    n: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    m2: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, width: int) -> _Moments:
        z = np.zeros(width)
        return cls(z.copy(), z.copy(), z.copy())

    def add(self, values: npt.NDArray[np.float64]) -> None:
        """values (rows, width) with NaN for missing."""
        ok = ~np.isnan(values)
        n_b = ok.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, np.nansum(values, axis=0) / np.maximum(n_b, 1), 0.0)
            m2_b = np.nansum((values - mean_b) ** 2, axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        safe = np.maximum(n, 1)
        self.mean = self.mean + delta * n_b / safe
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / safe
        self.n = n

    def std(self) -> npt.NDArray[np.float64]:
        return np.sqrt(self.m2 / np.maximum(self.n, 1))


@dataclass
class _Stats:
    moments: dict[str, _Moments] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    rows: int = 0


def infer_spec(source: ParquetSource, opts: SpecOptions) -> tuple[FeatureSpec, int]:
    """The feature spec of the training rows, and how many training rows there are."""
    kinds = column_kinds(source.schema, opts)
    stats = _gather(source, kinds, opts)
    if stats.rows == 0:
        raise DataError(f"no training rows in {source.location!r} (empty data?)")
    features = [_feature(name, kind, stats, opts) for name, kind in kinds.items()]
    spec = FeatureSpec(
        features=features,
        id_column=opts.id_column,
        label_column=opts.label_column,
        ignored_columns=list(opts.ignore_columns),
        missing=opts.missing,  # type: ignore[arg-type]
    )
    return spec, stats.rows


def _gather(source: ParquetSource, kinds: dict[str, Kind], opts: SpecOptions) -> _Stats:
    stats = _Stats()
    for batch in source.batches(list(kinds)):
        train = ~split_mask(batch.positions, opts.validation_fraction, opts.seed)
        if not train.any():
            continue
        rb = batch.table.filter(pa.array(train))
        stats.rows += rb.num_rows
        for name, kind in kinds.items():
            col = rb.column(name)
            if kind == "categorical":
                stats.counts.setdefault(name, Counter()).update(_category_counts(col))
            else:
                values = column_values(col, kind, name)
                width = values.shape[1]
                mom = stats.moments.setdefault(name, _Moments.empty(width))
                if mom.n.shape[0] != width:
                    raise DataError(f"vector column {name!r} changes length ({width})")
                mom.add(values)
    return stats


def _category_counts(col: pa.Array) -> Counter[str]:
    counts: Counter[str] = Counter()
    vc = pc.value_counts(col.drop_null() if hasattr(col, "drop_null") else col)
    for item in vc.to_pylist():
        value: Any = item["values"]
        counts[category_key(value)] += int(item["counts"])
    return counts


def _feature(
    name: str, kind: Kind, stats: _Stats, opts: SpecOptions
) -> NumericFeature | BooleanFeature | VectorFeature | CategoricalFeature:
    if kind == "categorical":
        counts = stats.counts.get(name, Counter())
        if not counts:
            raise DataError(f"column {name!r} has only null values")
        top = [c for c, _ in counts.most_common(opts.max_categories)]
        return CategoricalFeature(name=name, categories=top)
    mom = stats.moments[name]
    if not mom.n.any():
        raise DataError(f"column {name!r} has only null/NaN values")
    std = mom.std()
    if kind == "vector":
        floor = float(np.sqrt(np.mean(std**2))) or 1.0
        std = np.where(std > 1e-12, std, floor)
        return VectorFeature(name=name, length=len(std), mean=mom.mean.tolist(), std=std.tolist())
    if std[0] <= 1e-12:
        raise DataError(
            f"column {name!r} is constant ({mom.mean[0]:g}); it carries no signal to learn: "
            f"drop it with --ignore-columns {name}"
        )
    if not np.isfinite(mom.mean[0]) or not np.isfinite(std[0]):
        raise DataError(f"column {name!r} has infinite values")
    if kind == "boolean":
        return BooleanFeature(name=name, mean=float(mom.mean[0]), std=float(std[0]))
    return NumericFeature(name=name, mean=float(mom.mean[0]), std=float(std[0]))
