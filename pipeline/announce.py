"""The "new model published" announcement: a Kafka message so workers reload at once.

The trainer sends one after every publish when ``TRAINER_ANNOUNCE_TOPIC`` is set: key = the
model name (UTF-8), value = this JSON object, header ``content-type: application/json``::

    {"schema_version": 1, "name": "sensors", "version": "20261124T042238Z-c36436",
     "path": "/models/sensors/20261124T042238Z-c36436", "threshold": 0.141,
     "created_at": "2026-11-24T04:22:38.571000Z"}

``path`` is the version directory as the trainer saw it; a worker whose store is mounted
elsewhere should load ``<its store>/<name>/<version>`` instead. The announcement is only a
hint: LATEST stays the source of truth (a worker that misses a message still reloads at its
next poll, and one that reads an old message must not roll back to it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.artifact import Manifest
from pipeline.exceptions import DataError

CONTENT_TYPE = "application/json"


class ModelAnnouncement(BaseModel):
    """Value of an announcement message (key: the model name)."""

    # Consumers ignore fields a newer trainer may add; schema_version says what they can rely on.
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, description="model name inside the store")
    version: str = Field(min_length=1, description="the version LATEST now names")
    path: str = Field(description="version directory as the publisher saw it")
    threshold: float = Field(description="the new model's threshold")
    created_at: datetime = Field(description="when the version was published (UTC)")

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: str | Path) -> ModelAnnouncement:
        path = Path(store).resolve() / manifest.name / manifest.version
        return cls(
            name=manifest.name,
            version=manifest.version,
            path=str(path),
            threshold=manifest.threshold.value,
            created_at=manifest.created_at,
        )

    @property
    def key(self) -> bytes:
        return self.name.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelAnnouncement:
        """Parse a message value; DataError says what is wrong with it."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise DataError(f"not a model announcement: {exc}") from exc
