"""Announce a published model on Kafka so workers reload at once instead of at their next poll.

The message schema lives in the shared contract (``pipeline.contract.announce.ModelAnnouncement``).
Sent with ``acks=all`` and waited for; a failure raises ``AnnounceError`` carrying the
version, because by then the model *is* published (LATEST names it) and must not be undone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipeline.contract.announce import CONTENT_TYPE, ModelAnnouncement, encode_announcement
from pipeline.contract.artifact import Manifest
from pipeline.contract.exceptions import AnnounceError
from pipeline.kafka.construct import construct
from pipeline.kafka.errors import credentials_hint
from pipeline.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


def announce(kafka: KafkaSettings, topic: str, manifest: Manifest, store: str | Path) -> None:
    """Send one announcement of ``manifest`` to ``topic`` and wait for the broker's ack.

    Bounded by ``kafka.request_timeout_ms`` for bootstrapping, metadata and the ack.
    """
    key, value = encode_announcement(ModelAnnouncement.from_manifest(manifest, store))
    timeout_ms = kafka.request_timeout_ms
    try:
        with _producer(kafka, timeout_ms) as producer:
            meta = producer.send(
                topic,
                value=value,
                key=key,
                headers=[("content-type", CONTENT_TYPE.encode())],
            ).get(timeout=timeout_ms / 1000 + 1)
    except KafkaError as exc:
        raise AnnounceError(
            f"published {manifest.name}/{manifest.version} but could not announce it on topic "
            f"{topic!r} ({kafka.bootstrap_servers}): {exc!r}"
            f"{credentials_hint(kafka, exc, 'TRAINER_')}; workers still load it at their "
            "next LATEST poll",
            version=manifest.version,
        ) from exc
    log.info(
        "announced",
        extra={
            "topic": topic,
            "partition": meta.partition,
            "offset": meta.offset,
            "version": manifest.version,
        },
    )


@contextlib.contextmanager
def _producer(kafka: KafkaSettings, timeout_ms: int) -> Iterator[KafkaProducer]:
    """A producer closed on exit, even when its constructor fails (``kafka_clients``)."""
    config = kafka.client_kwargs() | {  # the announce timeout wins over the shared one
        "acks": "all",
        "bootstrap_timeout_ms": timeout_ms,
        "max_block_ms": timeout_ms,
    }
    producer = construct(KafkaProducer, **config)
    try:
        yield producer
    finally:
        producer.close(timeout=10)
