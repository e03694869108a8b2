"""Arrow record batches to the raw arrays of the feature spec (continuous block, indices).

A thin name for the shared encoder in ``pipeline.tabular``, kept for callers that think in
trainer terms; the trainer's own rows come from ``trainer.rows``.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.features import FeatureSpec, FloatArray, IndexArray
from pipeline.tabular import encode_record_batch


def encode_batch(rb: pa.RecordBatch, spec: FeatureSpec) -> tuple[FloatArray, IndexArray]:
    """Encode one Arrow batch with the shared encoder (see ``pipeline.tabular``)."""
    return encode_record_batch(rb, spec)
