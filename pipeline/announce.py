"""The model announcement contract: what the trainer publishes to the announce topic.

After a version is published to the model store (LATEST replaced), the trainer may send one
record to ``PIPELINE_ANNOUNCE_TOPIC``: key = the model name (UTF-8), so the announcements of
one model stay ordered in one partition; value = this JSON object. Workers serving that name
load the announced version at once instead of waiting for their next LATEST poll. Unknown
fields are ignored, so the trainer may add some without breaking running workers.

    {"schema_version": 1, "name": "sensors", "version": "20261124T042238Z-c36436",
     "published_at": "2026-11-24T04:22:38Z", "threshold": 0.14}
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.exceptions import DataError

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # as pipeline.artifact accepts


class ModelAnnouncement(BaseModel):
    """One published model version."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = Field(default=1, ge=1, description="1; readers ignore unknown fields")
    name: str = Field(min_length=1, description="model name in the store")
    version: str = Field(pattern=VERSION_PATTERN, description="the version just published")
    published_at: datetime | None = Field(default=None, description="when LATEST was replaced")
    threshold: float | None = Field(default=None, description="the new version's threshold")


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
