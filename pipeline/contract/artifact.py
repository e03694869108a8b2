"""The model artifact: manifest schema, atomic publishing and validated loading.

Layout in the model store (a local directory, a mounted volume, or an fsspec URL on an object
store, see :mod:`pipeline.contract.store` for how publishing stays atomic there)::

    <store>/<name>/<version>/model.safetensors
    <store>/<name>/<version>/manifest.json
    <store>/<name>/LATEST            # one line: the current version

Publishing writes the version into a hidden staging directory, renames it into place (atomic
on one filesystem), and only then replaces LATEST through a rename. A reader therefore sees
either the old version or the complete new one, never a half-written model.

Loading never unpickles: weights are read with safetensors only, checked against the sha256
in the manifest, loaded with strict shapes, and run on a smoke batch before use.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.contract.entities import EntityInfo
from pipeline.contract.entity_artifact import EntitySet, file_sha256, load_entity_set
from pipeline.contract.exceptions import ArtifactInvalid, ArtifactNotFound
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import AnomalyModel, ModelConfig, build_model
from pipeline.contract.store import is_url, read_latest, upload_version, version_dir, write_latest

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class ThresholdInfo(BaseModel):
    """The alert threshold and what it promises about false alarms on normal records."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: float
    quantile: float = Field(gt=0, lt=1)
    rows: int = Field(ge=1, description="calibration rows the quantile was taken over")
    rank: int | None = Field(
        default=None,
        ge=1,
        description="the threshold is the rank-th smallest calibration score, ceil((n+1)q) "
        "(n when too few rows); None in manifests from before conformal thresholds",
    )
    target_fpr: float | None = Field(
        default=None, description="the false-alarm rate asked for (--target-fpr), if any"
    )
    expected_false_alarm_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="mean false-alarm rate on new normal records, (n+1-rank)/(n+1)",
    )
    false_alarm_rate_interval: tuple[float, float] | None = Field(
        default=None,
        description="90% interval of that rate over draws of the calibration rows "
        "(Beta(n+1-rank, rank) quantiles)",
    )
    enough_rows: bool = Field(
        default=True,
        description="False when the calibration rows were too few for the quantile (the "
        "threshold is then the largest calibration score)",
    )


class WeightsInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    file: str = WEIGHTS_FILE
    format: Literal["safetensors"] = "safetensors"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TrainingSummary(BaseModel):
    """What a reader needs to judge the model: data sizes, losses, how it was trained."""

    model_config = ConfigDict(frozen=True, extra="allow")
    rows_train: int = Field(ge=0)
    rows_validation: int = Field(ge=0)
    epochs: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    train_loss: list[float] = Field(default_factory=list)
    validation_loss: list[float] = Field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    duration_s: float = 0.0
    torch_version: str = ""
    world_size: int = Field(default=1, ge=1, description="training processes (DDP ranks)")
    data_mode: Literal["memory", "stream"] = Field(
        default="memory", description="rows cached in RAM, or streamed from Parquet each epoch"
    )
    mixed_precision: str | None = Field(
        default=None, description="autocast dtype on CUDA (bfloat16/float16), None for float32"
    )
    rows_per_s: float = Field(default=0.0, ge=0, description="training rows per second")
    resumed_from_epoch: int = Field(
        default=0, ge=0, description="epochs restored from a checkpoint (0: fresh run)"
    )
    rows_calibration: int = Field(
        default=0, ge=0, description="rows used only for the threshold and score statistics"
    )
    split: dict[str, Any] = Field(
        default_factory=dict,
        description="how rows were split into fit / select (validation) / calibrate: kind "
        "(rows, entity, time), column, fractions",
    )
    budget: dict[str, int] = Field(
        default_factory=dict,
        description="batch_size, epochs, patience and max_steps the run used (from the fit "
        "rows unless given)",
    )
    negatives: dict[str, float] = Field(
        default_factory=dict,
        description="shuffled negatives' weight and margin in the loss (empty: not used)",
    )
    learning_rate: float | None = Field(default=None, description="Adam learning rate")
    weight_decay: float | None = Field(default=None, description="Adam weight decay")
    constant_columns: list[str] = Field(
        default_factory=list,
        description="columns constant in the fit rows, kept (any other value scores high)",
    )
    drifting_columns: list[str] = Field(
        default_factory=list,
        description="columns whose latest rows (time split) lie outside the fit rows (numeric: "
        "mean outside the fit range; categorical: mostly new categories): out of the training "
        "range for every later record; left out "
        "of the features (the spec's ignored_columns) unless drop_drifting_columns is off",
    )


class Manifest(BaseModel):
    """manifest.json: everything needed to rebuild, trust and monitor the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    name: str
    version: str
    created_at: datetime
    model: ModelConfig
    features: FeatureSpec
    threshold: ThresholdInfo
    score_quantiles: dict[str, float] = Field(
        description="validation score quantiles keyed by level ('0.5', '0.99', ...), for drift"
    )
    unit_error_mean: list[float] = Field(
        default_factory=list, description="mean validation error per unit (feature explanations)"
    )
    unit_error_p99: list[float] = Field(
        default_factory=list,
        description="99th percentile of the validation error per unit, over a bounded sample "
        "of held-out rows (a unit's error far above it is unusual for that feature)",
    )
    training: TrainingSummary
    data_fingerprint: str = ""
    weights: WeightsInfo
    entities: EntityInfo | None = Field(
        default=None,
        description="per-entity versions only: the entity column, index file and counts "
        "(pipeline.contract.entities); the weights are then stacked, slot 0 the fallback",
    )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


@dataclass(frozen=True)
class LoadedArtifact:
    """A validated artifact: its manifest and the model in eval mode on the CPU.

    For a per-entity version ``entities`` holds the index and the stacked weights and
    ``model`` is the fallback alone: score such a version with ``EntityScorer``."""

    manifest: Manifest
    model: AnomalyModel
    path: Path
    entities: EntitySet | None = None

    @property
    def version(self) -> str:
        return self.manifest.version


# ------------------------------------------------------------------ publishing
def new_version(now: datetime | None = None) -> str:
    """Sortable, unique version id: UTC timestamp plus a random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:6]}"


def weights_bytes_sha256(path: Path) -> str:
    return file_sha256(path)


def publish(
    store: str | Path,
    model: nn.Module,
    manifest_fields: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    version: str | None = None,
) -> Manifest:
    """Write weights + manifest as a new version and point LATEST at it, atomically.

    ``manifest_fields`` holds every Manifest field except ``version``, ``created_at`` and
    ``weights``, which are filled here. ``extra_files`` (name -> bytes, e.g. a per-entity
    version's index) are written into the version directory before the manifest; their
    checksums belong in ``manifest_fields``. ``version`` (default: a new one) lets a caller
    name the version before publishing it. Returns the published manifest.
    """
    name = manifest_fields["name"]
    if is_url(store):  # staged locally, uploaded with the manifest last, then LATEST
        with tempfile.TemporaryDirectory(prefix="model-publish-") as tmp:
            manifest = publish(tmp, model, manifest_fields, extra_files, version)
            upload_version(str(store), Path(tmp) / name / manifest.version, name, manifest.version)
        write_latest(str(store), name, manifest.version)
        return manifest
    model_dir = Path(store) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or new_version()
    staging = model_dir / f".staging-{version}"
    staging.mkdir()
    weights_path = staging / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path))
    for file_name, data in (extra_files or {}).items():
        _write_durably(staging / file_name, data)
    manifest = Manifest(
        **manifest_fields,
        version=version,
        created_at=datetime.now(UTC),
        weights=WeightsInfo(sha256=weights_bytes_sha256(weights_path)),
    )
    _write_durably(staging / MANIFEST_FILE, manifest.to_json().encode())
    _fsync_dir(staging)
    os.rename(staging, model_dir / version)
    set_latest(store, name, version)
    return manifest


def set_latest(store: str | Path, name: str, version: str) -> None:
    """Atomically point LATEST at an existing, complete version (also used for rollback)."""
    if is_url(store):
        write_latest(str(store), name, version)
        return
    model_dir = Path(store) / name
    if not (model_dir / version / MANIFEST_FILE).is_file():
        raise ArtifactNotFound(f"cannot point LATEST at {model_dir / version}: no manifest there")
    tmp = model_dir / f".{LATEST_FILE}.{uuid.uuid4().hex}"
    _write_durably(tmp, f"{version}\n".encode())
    os.replace(tmp, model_dir / LATEST_FILE)
    _fsync_dir(model_dir)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------- loading
def latest_version(store: str | Path, name: str) -> str:
    """The version LATEST names; ArtifactNotFound when there is none."""
    latest = f"{store}/{name}/{LATEST_FILE}"
    try:
        version = read_latest(str(store), name)
    except ArtifactNotFound as exc:
        raise ArtifactNotFound(f"no published model {name!r} in store {store} ({latest})") from exc
    if not _VERSION_RE.match(version):
        raise ArtifactInvalid(f"{latest} holds an invalid version string {version!r}")
    return version


def read_manifest(path: Path) -> Manifest:
    """Parse and validate manifest.json; errors name the file and the field."""
    file = path / MANIFEST_FILE
    try:
        raw = file.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactNotFound(f"missing {file}") from exc
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactInvalid(f"{file} is not a valid manifest: {exc}") from exc
    if manifest.model.input_dim != manifest.features.input_dim:
        raise ArtifactInvalid(
            f"{file}: model.input_dim={manifest.model.input_dim} but the feature spec needs "
            f"{manifest.features.input_dim}"
        )
    if manifest.model.error_units not in (0, manifest.features.n_units):
        raise ArtifactInvalid(
            f"{file}: model.error_units={manifest.model.error_units} but the feature spec has "
            f"{manifest.features.n_units} error units"
        )
    if manifest.model.output_dim != manifest.features.input_dim:
        raise ArtifactInvalid(
            f"{file}: model.output_dim={manifest.model.output_dim} but the feature spec needs "
            f"{manifest.features.input_dim}"
        )
    return manifest


def load_artifact(store: str | Path, name: str, version: str | None = None) -> LoadedArtifact:
    """Load and validate a version (LATEST when None); the model is in eval mode on the CPU."""
    version = version or latest_version(store, name)
    path = version_dir(store, name, version)  # an object store's version: a local copy
    manifest = read_manifest(path)
    if manifest.name != name or manifest.version != version:
        raise ArtifactInvalid(
            f"{path}: manifest says {manifest.name}/{manifest.version}, expected {name}/{version}"
        )
    weights = _weights_path(path, manifest.weights.file)
    _check_weights_file(weights, manifest.weights.sha256)
    entities = None
    if manifest.entities is not None:
        entities, model = load_entity_set(path, manifest.entities, manifest.model, weights)
    else:
        model = build_model(manifest.model)
        try:
            state = load_file(str(weights))
            model.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ArtifactInvalid(
                f"{weights}: weights do not fit the manifest's model: {exc}"
            ) from exc
        model.eval()
    _smoke_test(model, manifest, path)
    return LoadedArtifact(manifest=manifest, model=model, path=path, entities=entities)


def _weights_path(version_dir: Path, file: str) -> Path:
    """The weights named by the manifest, which must be a file of the version directory itself:
    a name like ``../other/model.safetensors``, an absolute path or a symlink out of the
    directory would let a manifest load any readable file as the model."""
    weights = version_dir / file
    plain = file not in ("", ".", "..") and "/" not in file and "\\" not in file
    if not plain or weights.resolve().parent != version_dir.resolve():
        raise ArtifactInvalid(
            f"{version_dir / MANIFEST_FILE}: weights.file {file!r} is not a file inside the "
            f"version directory {version_dir}"
        )
    return weights


def _check_weights_file(weights: Path, expected_sha: str) -> None:
    """Refuse anything that is not an intact safetensors file before any parser touches it."""
    if not weights.is_file():
        raise ArtifactInvalid(f"missing weights file {weights}")
    actual = weights_bytes_sha256(weights)
    if actual != expected_sha:
        raise ArtifactInvalid(
            f"{weights}: sha256 {actual} does not match the manifest's {expected_sha}"
        )
    with weights.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        raise ArtifactInvalid(f"{weights}: truncated ({len(head)} bytes)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > _MAX_SAFETENSORS_HEADER:
        raise ArtifactInvalid(f"{weights}: not a safetensors file (pickle or other format?)")


def _smoke_test(model: AnomalyModel, manifest: Manifest, path: Path) -> None:
    """Run a small batch through the model and refuse it unless the output is finite."""
    with torch.inference_mode():
        out = model(torch.zeros(4, manifest.model.input_dim))
    members = manifest.model.members
    expected = (
        (4, manifest.model.output_dim) if members == 1 else (members, 4, manifest.model.output_dim)
    )
    if out.shape != expected or not torch.isfinite(out).all():
        raise ArtifactInvalid(f"{path}: smoke batch gave shape {tuple(out.shape)} or non-finite")


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """Short dict for logs and the CLI."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "kind": manifest.model.kind,
        "features": len(manifest.features.features),
        "threshold": manifest.threshold.value,
        "quantile": manifest.threshold.quantile,
    }
