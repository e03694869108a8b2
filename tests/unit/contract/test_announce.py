from datetime import UTC, datetime

import pytest

from pipeline.contract.announce import ModelAnnouncement, decode_announcement, encode_announcement
from pipeline.contract.exceptions import DataError
from tests.support.factories import publish_model


def test_announcement_round_trips_and_names_the_published_version(tmp_path):
    manifest = publish_model(tmp_path, name="sensors", threshold=0.25)
    message = ModelAnnouncement.from_manifest(manifest, tmp_path)
    key, value = encode_announcement(message)
    assert key == b"sensors"
    parsed = decode_announcement(value)
    assert parsed == message
    assert (parsed.name, parsed.version, parsed.threshold) == ("sensors", manifest.version, 0.25)
    assert parsed.path == str(tmp_path.resolve() / "sensors" / manifest.version)
    assert parsed.created_at == manifest.created_at


def test_announcement_of_an_object_store_version_names_its_url(tmp_path):
    manifest = publish_model(tmp_path, name="sensors")
    message = ModelAnnouncement.from_manifest(manifest, "s3://models/prod/")
    assert message.path == f"s3://models/prod/sensors/{manifest.version}"


def test_consumers_ignore_unknown_fields_and_refuse_broken_messages():
    value = (
        b'{"schema_version": 2, "name": "m", "version": "v1", "path": "/s/m/v1", '
        b'"threshold": 1.5, "created_at": "2026-01-01T00:00:00Z", "added_later": true}'
    )
    parsed = decode_announcement(value)
    assert parsed.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert decode_announcement(b'{"name": "m", "version": "v2"}').threshold is None
    for broken in (b'{"name": "m"}', b"\xff not json", None, b'{"name": "m", "version": "../x"}'):
        with pytest.raises(DataError, match="not a model announcement"):
            decode_announcement(broken)
