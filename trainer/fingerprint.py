"""What identifies a training run's inputs: the data (published in the manifest, so a model
can be traced to the files it saw) and the run (what a checkpoint must match to be resumed)."""

from __future__ import annotations

import hashlib
import json

from pipeline.contract.features import FeatureSpec
from trainer.data import ParquetSource
from trainer.settings import TrainerSettings

_NOT_IN_RUN_FINGERPRINT = {
    "epochs",
    "model_store",
    "name",
    "checkpoint_dir",
    "progress",
    "announce_topic",
    "kafka",
    "device",
    "memory_budget_mb",
}


def data_fingerprint(source: ParquetSource, spec: FeatureSpec) -> str:
    """sha256 over the file list with row counts and the fitted statistics."""
    digest = hashlib.sha256()
    rows: dict[str, int] = {}
    for piece in source.pieces:
        rows[piece.path] = rows.get(piece.path, 0) + piece.rows
    for path in source.files:
        digest.update(path.encode())
        digest.update(str(rows.get(path, 0)).encode())
    digest.update(spec.model_dump_json().encode())
    return digest.hexdigest()


def run_fingerprint(
    s: TrainerSettings, source: ParquetSource, spec: FeatureSpec, world: int
) -> str:
    """What a checkpoint must match to be resumed: model-shaping settings, spec, data, ranks."""
    shaping = s.model_dump(mode="json", exclude=_NOT_IN_RUN_FINGERPRINT)
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    digest.update(data_fingerprint(source, spec).encode())
    digest.update(f"world={world}".encode())
    return digest.hexdigest()
