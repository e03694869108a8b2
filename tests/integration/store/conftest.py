"""A real S3-compatible server (S3Proxy on loopback) for the object-store model registry tests.

Started once per session like the Kafka broker; each test gets its own key prefix, and the AWS
variables that point s3fs at the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import s3fs

from pipeline.devstack.locals3 import LocalS3, S3Record

BUCKET = "models"


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Record]:
    server = LocalS3(tmp_path_factory.mktemp("s3proxy"))
    record = server.start(buckets=(BUCKET,))
    yield record
    server.stop()


def use_server(monkeypatch: pytest.MonkeyPatch, record: S3Record, **override: str) -> None:
    """Point this process's s3fs at ``record`` (``override``: e.g. a wrong secret)."""
    for key, value in (record.env() | override).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # instances remember the old endpoint and keys


@pytest.fixture
def s3_store(local_s3: S3Record, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh ``s3://models/<prefix>`` store on the session's server."""
    use_server(monkeypatch, local_s3)
    yield f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem.clear_instance_cache()
