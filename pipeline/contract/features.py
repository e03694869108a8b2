"""The feature spec: the one definition of how a record becomes model input.

The trainer infers it from the training data and stores it in the artifact's manifest; the
worker reads it back from there and never re-derives it. Both sides turn rows into tensors
through this module and ``pipeline.contract.scoring``, so a record scores the same in both.

Layout of the model input, fixed by the order of ``FeatureSpec.features``:

    [ continuous block (C) | one-hot block of each categorical (k_1 + ... + k_K) ]

The continuous block holds numeric columns (1 value each), boolean columns (0/1) and dense
vector columns (``length`` values each), in spec order, *raw* (unscaled). Standardisation
with the stored mean/std (after a signed log for a heavy-tailed numeric column, ``tail_scale``)
happens inside the scorer, on the model's device. A categorical
column contributes one integer index (0 is the bucket for unknown and missing values).

Error units: each continuous value is one unit (squared error), each categorical column is
one unit (cross-entropy). A record's score is the mean over units, which is plain MSE when
all features are continuous.

Missing values (documented policy, see README "Missing values"):
- training: a null numeric/boolean/vector element is left out of the statistics and imputed
  with the training mean (0 after standardisation); a null categorical falls into bucket 0;
- serving: a JSON ``null`` is treated the same way when ``missing == "impute"`` and sent to
  the dead-letter topic when ``missing == "reject"``; an absent field always goes to the
  dead-letter topic (the record does not match the contract).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.contract.exceptions import FeatureSpecError

UNKNOWN_CATEGORY = "<unknown>"
MIN_STD = 1e-6

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]


class _Feature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)


class NumericFeature(_Feature):
    """A real-valued column, standardised with the training mean and std.

    With ``tail_scale`` the column is heavy-tailed in the training rows (an amount, an
    income) and enters the model as sign(value) log(1 + |value| / tail_scale), about linear
    below ``tail_scale`` and a logarithm beyond, before it is standardised; ``mean`` and
    ``std`` are then those of the compressed values (``trainer.tails`` says why).
    """

    kind: Literal["numeric"] = "numeric"
    mean: float
    std: float = Field(gt=0)
    tail_scale: float | None = Field(default=None, gt=0)


class BooleanFeature(_Feature):
    """A true/false column, fed as 0/1 and standardised like a numeric one."""

    kind: Literal["boolean"] = "boolean"
    mean: float = Field(ge=0, le=1)
    std: float = Field(gt=0)


class VectorFeature(_Feature):
    """A dense fixed-length vector (pixels, embeddings), standardised element-wise."""

    kind: Literal["vector"] = "vector"
    length: int = Field(gt=0)
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _lengths_match(self) -> VectorFeature:
        if len(self.mean) != self.length or len(self.std) != self.length:
            raise ValueError(
                f"vector feature {self.name!r}: mean/std must have {self.length} entries, "
                f"got {len(self.mean)}/{len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"vector feature {self.name!r}: std entries must be > 0")
        return self


class CategoricalFeature(_Feature):
    """A discrete column; index 0 is the bucket for unknown and missing values."""

    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("categories must be unique")
        if UNKNOWN_CATEGORY in value:
            raise ValueError(f"{UNKNOWN_CATEGORY!r} is reserved for the unknown bucket")
        return value

    @property
    def cardinality(self) -> int:
        """Number of one-hot slots: the known categories plus the unknown bucket."""
        return len(self.categories) + 1

    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i + 1 for i, c in enumerate(self.categories)}


Feature = Annotated[
    NumericFeature | BooleanFeature | VectorFeature | CategoricalFeature,
    Field(discriminator="kind"),
]
ContinuousFeature = NumericFeature | BooleanFeature | VectorFeature


@dataclass(frozen=True)
class Slot:
    """Where one feature sits in the continuous block or the categorical index matrix."""

    feature: ContinuousFeature | CategoricalFeature
    start: int
    width: int


class FeatureSpec(BaseModel):
    """Columns the model reads, their kinds and the statistics to scale them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    features: list[Feature] = Field(min_length=1)
    id_column: str | None = None
    label_column: str | None = None
    ignored_columns: list[str] = Field(default_factory=list)
    missing: Literal["impute", "reject"] = "impute"

    @model_validator(mode="after")
    def _names_unique(self) -> FeatureSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {dupes}")
        for special in (self.id_column, self.label_column):
            if special is not None and special in names:
                raise ValueError(f"column {special!r} cannot be both a feature and id/label")
        return self

    # ----------------------------------------------------------------- layout
    @cached_property
    def continuous_slots(self) -> list[Slot]:
        slots, start = [], 0
        for f in self.features:
            if isinstance(f, CategoricalFeature):
                continue
            width = f.length if isinstance(f, VectorFeature) else 1
            slots.append(Slot(f, start, width))
            start += width
        return slots

    @cached_property
    def categorical_slots(self) -> list[Slot]:
        slots, start = [], 0
        for f in self.features:
            if isinstance(f, CategoricalFeature):
                slots.append(Slot(f, start, f.cardinality))
                start += f.cardinality
        return slots

    @property
    def n_continuous(self) -> int:
        """C: width of the raw continuous block."""
        return sum(s.width for s in self.continuous_slots)

    @property
    def has_vector_feature(self) -> bool:
        """True when a feature is a vector (an image, an embedding): its elements share one
        scale, in standardisation and in the error units."""
        return any(isinstance(s.feature, VectorFeature) for s in self.continuous_slots)

    @property
    def whitenable_units(self) -> int:
        """Continuous units whose residuals may be whitened together: all of them, or none
        when a vector feature's elements are among them (``pipeline.contract.models.
        whitening_units``)."""
        return 0 if self.has_vector_feature else self.n_continuous

    @property
    def n_categorical(self) -> int:
        """K: number of categorical columns (one index each)."""
        return len(self.categorical_slots)

    @property
    def cardinalities(self) -> list[int]:
        return [s.width for s in self.categorical_slots]

    @property
    def input_dim(self) -> int:
        """Width of the model input: continuous block plus all one-hot slots."""
        return self.n_continuous + sum(self.cardinalities)

    @property
    def n_units(self) -> int:
        """Number of error units: one per continuous value, one per categorical column."""
        return self.n_continuous + self.n_categorical

    @cached_property
    def unit_names(self) -> list[str]:
        """Human names of the error units, in unit order (used for top features)."""
        names: list[str] = []
        for slot in self.continuous_slots:
            f = slot.feature
            if isinstance(f, VectorFeature):
                names.extend(f"{f.name}[{i}]" for i in range(f.length))
            else:
                names.append(f.name)
        names.extend(s.feature.name for s in self.categorical_slots)
        return names

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def all_continuous(self) -> bool:
        """True when every feature is continuous, which enables the binary fast path."""
        return self.n_categorical == 0

    def continuous_mean_std(self) -> tuple[FloatArray, FloatArray]:
        """Per-value mean and std of the continuous block, in block order."""
        means: list[float] = []
        stds: list[float] = []
        for slot in self.continuous_slots:
            f = slot.feature
            if isinstance(f, VectorFeature):
                means.extend(f.mean)
                stds.extend(f.std)
            elif isinstance(f, NumericFeature | BooleanFeature):
                means.append(f.mean)
                stds.append(f.std)
        return np.asarray(means, dtype=np.float32), np.asarray(stds, dtype=np.float32)

    def continuous_tail_scales(self) -> FloatArray:
        """Per-value ``tail_scale`` of the continuous block, in block order; 0 where a value
        enters uncompressed."""
        scales: list[float] = []
        for slot in self.continuous_slots:
            f = slot.feature
            scale = f.tail_scale if isinstance(f, NumericFeature) else None
            scales.extend([scale or 0.0] * slot.width)
        return np.asarray(scales, dtype=np.float32)

    def iter_features(self) -> Iterator[ContinuousFeature | CategoricalFeature]:
        yield from self.features

    # ------------------------------------------------------------- encoding
    def encode_columns(self, columns: Mapping[str, Any]) -> tuple[FloatArray, IndexArray]:
        """Turn column arrays into (raw continuous block (B, C), category indices (B, K)).

        ``columns`` maps feature names to array-likes of equal length: numbers (NaN for
        missing) for numeric/boolean, an (B, n) array for vectors, strings or None for
        categoricals. Used by the trainer on Arrow batches and by batch scoring.
        """
        n = _common_length(columns, self.column_names)
        cont = np.empty((n, self.n_continuous), dtype=np.float32)
        for slot in self.continuous_slots:
            cont[:, slot.start : slot.start + slot.width] = _as_continuous(
                columns[slot.feature.name], slot, n
            )
        cat = np.zeros((n, self.n_categorical), dtype=np.int64)
        for j, slot in enumerate(self.categorical_slots):
            assert isinstance(slot.feature, CategoricalFeature)
            cat[:, j] = category_indices(slot.feature, columns[slot.feature.name])
        return cont, cat


def category_indices(feature: CategoricalFeature, values: Sequence[Any] | Any) -> IndexArray:
    """Map raw values to vocabulary indices; unknown and missing values map to 0."""
    lookup = feature.index
    return np.fromiter(
        (0 if v is None else lookup.get(category_key(v), 0) for v in values),
        dtype=np.int64,
    )


def category_key(value: Any) -> str:
    """Canonical string form of a category value (ints and strings from JSON alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _common_length(columns: Mapping[str, Any], names: list[str]) -> int:
    missing = [n for n in names if n not in columns]
    if missing:
        raise FeatureSpecError(f"missing feature columns: {missing}")
    lengths = {n: len(columns[n]) for n in names}
    if len(set(lengths.values())) != 1:
        raise FeatureSpecError(f"feature columns differ in length: {lengths}")
    return next(iter(lengths.values()))


def _as_continuous(values: Any, slot: Slot, n: int) -> FloatArray:
    name = slot.feature.name
    try:
        if isinstance(slot.feature, VectorFeature):
            arr = np.asarray(
                [np.full(slot.width, np.nan) if v is None else v for v in values]
                if not isinstance(values, np.ndarray)
                else values,
                dtype=np.float32,
            )
            if arr.shape != (n, slot.width):
                raise FeatureSpecError(
                    f"vector column {name!r}: expected shape ({n}, {slot.width}), got {arr.shape}"
                )
            return arr
        arr = np.asarray(
            [np.nan if v is None else v for v in values]
            if not isinstance(values, np.ndarray)
            else values,
            dtype=np.float32,
        )
        return arr.reshape(n, 1)
    except (TypeError, ValueError) as exc:
        raise FeatureSpecError(f"column {name!r}: cannot convert to numbers: {exc}") from exc
