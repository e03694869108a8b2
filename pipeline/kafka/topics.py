"""Creating the topics the worker writes to, so a fresh cluster works without manual steps,
and saying loudly when existing ones would not survive the loss of a broker.

Created topics get ``min(3, brokers)`` replicas and ``min.insync.replicas`` one less (at least
1) unless configured: with the producers' ``acks=all`` a write is then on two brokers before it
is acknowledged, and writes go on while one broker is down. Clusters that forbid topic creation
by clients keep their own topics: an existing topic, or a refusal to create one, is logged and
not an error; writing to a topic that does not exist then fails loudly at the first batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.kafka.construct import construct
from pipeline.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)
MIN_ISR = "min.insync.replicas"


@dataclass(frozen=True)
class TopicDurability:
    """Replication wanted for created topics; None: derived from the cluster size."""

    replication: int | None = None
    min_insync: int | None = None

    def resolve(self, brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) on a cluster of ``brokers`` brokers."""
        replication = self.replication or max(1, min(3, brokers))
        return replication, self.min_insync or max(1, replication - 1)


def ensure_topics(
    kafka: KafkaSettings,
    topics: list[str],
    partitions: int = 3,
    durability: TopicDurability | None = None,
) -> list[str]:
    """Create the missing topics; check the existing ones' durability; returns those created."""
    try:
        admin = construct(KafkaAdminClient, **kafka.client_kwargs())
    except KafkaError as exc:
        log.warning("cannot reach Kafka to create topics", extra={"error": repr(exc)})
        return []
    try:
        brokers = len(admin.describe_cluster().get("brokers") or [])
        existing = set(admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t]
        check_durability(admin, [t for t in wanted if t in existing], brokers)
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return []
        replication, min_isr = (durability or TopicDurability()).resolve(brokers)
        return create_missing(admin, missing, partitions, replication, min_isr)
    except KafkaError as exc:
        log.warning(
            "could not create or check topics", extra={"topics": topics, "error": repr(exc)}
        )
        return []
    finally:
        admin.close()


def create_missing(
    admin: KafkaAdminClient, missing: list[str], partitions: int, replication: int, min_isr: int
) -> list[str]:
    """Create each topic on its own, so one that exists after all (another worker was quicker,
    or the topic list came from a broker that had not heard of it yet) is not reported."""
    created = []
    for topic in missing:
        new = NewTopic(topic, partitions, replication, topic_configs={MIN_ISR: str(min_isr)})
        try:
            admin.create_topics([new])
        except TopicAlreadyExistsError:
            continue
        created.append(topic)
    if created:
        log.info(
            "created topics",
            extra={
                "topics": created,
                "replication_factor": replication,
                "min_insync_replicas": min_isr,
            },
        )
    return created


def check_durability(admin: KafkaAdminClient, topics: list[str], brokers: int) -> list[str]:
    """Warn about each topic that a single broker loss would stop (min ISR = replicas) or
    lose data from (one replica); returns the warnings. Silent on a one-broker cluster, where
    nothing can survive the loss of the broker."""
    if brokers < 2 or not topics:
        return []
    replicas = {
        d["name"]: min(len(p["replica_nodes"]) for p in d["partitions"])
        for d in admin.describe_topics(topics)
    }
    min_isr = _min_isr(admin, topics)
    problems = []
    for topic in topics:
        rf, isr = replicas.get(topic, 0), min_isr.get(topic, 1)
        if rf < 2:
            problems.append(f"{topic}: replication factor {rf}, a broker loss loses its data")
        elif isr >= rf:
            problems.append(
                f"{topic}: min.insync.replicas {isr} of {rf} replicas,"
                " a broker loss stops acks=all writes"
            )
    for problem in problems:
        log.warning(
            "OUTPUT TOPIC CANNOT SURVIVE A BROKER LOSS",
            extra={"problem": problem, "brokers": brokers},
        )
    return problems


def _min_isr(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t, configs={MIN_ISR: None}) for t in topics
    ]
    described: Any = admin.describe_configs(resources, config_filter="all")
    out: dict[str, int] = {}
    by_topic = {name: configs for kind in described.values() for name, configs in kind.items()}
    for topic, configs in by_topic.items():
        entry = configs.get(MIN_ISR)
        value = entry.get("value") if isinstance(entry, dict) else entry
        if value is not None:
            out[str(topic)] = int(value)
    return out
