"""Creating the topics the worker writes to, so a fresh cluster works without manual steps.

Clusters that forbid topic creation by clients simply keep their own topics: an existing
topic, or a refusal to create one, is logged and not an error; writing to a topic that does
not exist then fails loudly at the first batch.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.kafka.construct import construct
from pipeline.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


def ensure_topics(
    kafka: KafkaSettings, topics: list[str], partitions: int = 3, replication: int = 1
) -> list[str]:
    """Create the missing topics; returns those created."""
    try:
        admin = construct(KafkaAdminClient, **kafka.client_kwargs())
    except KafkaError as exc:
        log.warning("cannot reach Kafka to create topics", extra={"error": repr(exc)})
        return []
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t and t not in existing]
        if not missing:
            return []
        try:
            admin.create_topics([NewTopic(t, partitions, replication) for t in missing])
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            log.warning("could not create topics", extra={"topics": missing, "error": repr(exc)})
            return []
        log.info("created topics", extra={"topics": missing})
        return missing
    finally:
        admin.close()
