"""Arrow columns to the raw arrays of the feature spec.

Shared by the trainer (fitting, thresholds) and batch scoring (``python -m pipeline score``),
so a Parquet row is encoded exactly one way; the streaming codec produces the same arrays
from JSON (a test checks the scores agree).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract.exceptions import DataError
from pipeline.contract.features import CategoricalFeature, FeatureSpec, FloatArray, IndexArray


def column_values(col: pa.Array, kind: str, name: str) -> npt.NDArray[np.float64]:
    """(rows, width) float64 with NaN for nulls, for numeric/boolean/vector columns.

    Text in a numeric column (a column forced numeric, or a file whose column type disagrees
    with the spec) is parsed as numbers; text that is not a number is a DataError naming the
    column and the value.
    """
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    try:
        if kind == "vector":
            return _vector_values(col, name)
        if kind == "boolean" or text:
            col = pc.cast(col, pa.float64())
        arr = col.to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        what = "text where numbers are expected" if text else "expected numbers"
        raise DataError(f"column {name!r}: {what} ({exc})") from exc
    return np.asarray(arr, dtype=np.float64).reshape(-1, 1)


def _vector_values(col: pa.Array, name: str) -> npt.NDArray[np.float64]:
    if col.null_count:
        raise DataError(f"vector column {name!r} has null rows; fill or drop them")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise DataError(f"vector column {name!r} has rows of different or zero length")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    width = int(lengths[0]) if len(lengths) else 0
    return np.asarray(flat, dtype=np.float64).reshape(len(col), width)


def encode_record_batch(rb: pa.RecordBatch, spec: FeatureSpec) -> tuple[FloatArray, IndexArray]:
    """Encode one Arrow batch exactly as the worker encodes the same rows from JSON."""
    missing = [name for name in spec.column_names if name not in rb.schema.names]
    if missing:
        raise DataError(f"columns missing from the data: {missing}")
    columns: dict[str, object] = {}
    for f in spec.features:
        col = rb.column(f.name)
        if isinstance(f, CategoricalFeature):
            columns[f.name] = col.to_pylist()
        else:
            values = column_values(col, f.kind, f.name)
            columns[f.name] = values if f.kind == "vector" else values[:, 0]
    return spec.encode_columns(columns)
