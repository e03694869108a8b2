"""The model announcement contract: what the trainer publishes to the announce topic.

After a version is published to the model store (LATEST replaced), the trainer sends one
record to its announce topic (``TRAINER_ANNOUNCE_TOPIC``; workers read
``PIPELINE_ANNOUNCE_TOPIC``): key = the model name (UTF-8), so the announcements of one model
stay ordered in one partition; value = this JSON object; header
``content-type: application/json``. Workers serving that name read LATEST at once instead of
waiting for their next poll (``pipeline.worker.reload``). Unknown fields are ignored, so the trainer
may add some without breaking running workers::

    {"schema_version": 1, "name": "sensors", "version": "20261124T042238Z-c36436",
     "path": "/models/sensors/20261124T042238Z-c36436", "threshold": 0.141,
     "created_at": "2026-11-24T04:22:38.571000Z"}

``path`` is the version directory as the trainer saw it (the URL on an object store); a worker
whose store is mounted elsewhere loads ``<its store>/<name>/<version>``. The announcement is
only a hint: LATEST stays the source of truth (a worker that misses a message still reloads at
its next poll, and one that reads an old message does not roll back to it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.contract.artifact import Manifest
from pipeline.contract.exceptions import DataError
from pipeline.contract.store import is_url

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # as pipeline.contract.artifact accepts
CONTENT_TYPE = "application/json"


class ModelAnnouncement(BaseModel):
    """One published model version (the trainer fills every field)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = Field(default=1, ge=1, description="1; readers ignore unknown fields")
    name: str = Field(min_length=1, description="model name in the store")
    version: str = Field(pattern=VERSION_PATTERN, description="the version just published")
    path: str | None = Field(default=None, description="version directory, publisher's view")
    threshold: float | None = Field(default=None, description="the new version's threshold")
    created_at: datetime | None = Field(
        default=None, description="when the version was published (manifest created_at, UTC)"
    )

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: str | Path) -> ModelAnnouncement:
        return cls(
            name=manifest.name,
            version=manifest.version,
            path=(
                f"{str(store).rstrip('/')}/{manifest.name}/{manifest.version}"
                if is_url(store)
                else str(Path(store).resolve() / manifest.name / manifest.version)
            ),
            threshold=manifest.threshold.value,
            created_at=manifest.created_at,
        )


def encode_announcement(announcement: ModelAnnouncement) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka record."""
    value = announcement.model_dump_json(exclude_none=True).encode()
    return announcement.name.encode(), value


def decode_announcement(value: bytes | None) -> ModelAnnouncement:
    """Parse a record value; DataError says what is wrong with it."""
    try:
        return ModelAnnouncement.model_validate_json(value or b"")
    except ValidationError as exc:
        raise DataError(f"not a model announcement: {exc}") from exc
