"""An exactly-once batch is committed only under the membership whose assignment it was polled
in, never under a generation the consumer has joined but whose assignment it has not applied.

kafka-python 3.0.12 runs JoinGroup/SyncGroup as a task on its network thread: a poll that times
out leaves the join in flight, the JoinGroup answer replaces the member's generation at once,
and the new assignment is applied (rebalance listener: records of partitions that moved are
dropped from the batch) only by a later poll. A batch whose collection ended in that gap was
committed under the new generation, which the broker accepts, including offsets of partitions
the new generation gives to another member; when that member had already fetched its start
offset, it read those records again (test_reliability_rebalance[exactly-once]: 3 records
duplicated, once in CI). Here the gap is held open: the other member leads the group and its
assignor waits for the test, so the worker's SyncGroup cannot complete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.protocol.consumer.metadata import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.contract.exceptions import CommitRejected
from pipeline.kafka.clients import make_producer, new_consumer
from pipeline.worker import consumer as consumers
from pipeline.worker.assignment import Assignment
from pipeline.worker.sink import OutputSink, next_offsets
from tests.support.workers import settings

pytestmark = pytest.mark.kafka
OTHER = b"other"


class HeldAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """The leader's assignor, named ``range`` so that the worker's consumer agrees to it: hands
    out the partitions in ``plan``, and only once ``released`` is set."""

    name = "range"
    version = 0

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.plan: dict[bytes, list[int]] = {OTHER: [], b"": [0, 1]}
        self.released = threading.Event()
        self.released.set()

    def assign(self, cluster: Any, members: Any) -> dict[str, Any]:
        self.released.wait(30)
        return {
            m.member_id: ConsumerProtocolAssignment(
                self.version, [(self.topic, self.plan[m.metadata.user_data or b""])], b""
            )
            for m in members
        }

    def metadata(self, topics: Any) -> Any:
        return ConsumerProtocolSubscription(self.version, list(topics), OTHER)

    def on_assignment(self, assignment: Any, generation: Any) -> None:
        pass


def poll_until(
    consumers_: list[KafkaConsumer], done: Callable[[list[Any]], bool], timeout_s: float, what: str
) -> list[Any]:
    """Poll each consumer in turn (100 ms) until ``done(records the first one got)``; those
    records."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        for i, c in enumerate(consumers_):
            polled = c.poll(timeout_ms=100)
            if i == 0:
                got += [r for rs in polled.values() for r in rs]
    return got


@dataclass(frozen=True)
class TwoPartitions:
    """A fresh two-partition source holding records ``b"0"``..``b"9"`` (even numbers in
    partition 0, odd in 1, all acknowledged), an output topic and a group name; ``producer``
    (acks=all, open for the test) adds more with ``send``."""

    source: str
    out: str
    p0: TopicPartition
    p1: TopicPartition
    group: str
    producer: KafkaProducer

    def send(self, numbers: range) -> None:
        """Records ``b"<i>"`` for each ``i`` of ``numbers`` to partition ``i % 2``, acked."""
        for i in numbers:
            self.producer.send(self.source, b"%d" % i, partition=i % 2)
        self.producer.flush(timeout=10)


@pytest.fixture
def two_partitions(kafka_bootstrap: str, make_topic: Callable[..., str]) -> Iterator[TwoPartitions]:
    source, out = make_topic(2), make_topic(1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        p0, p1 = TopicPartition(source, 0), TopicPartition(source, 1)
        topics = TwoPartitions(source, out, p0, p1, f"g-{source}", producer)
        topics.send(range(10))
        yield topics
    finally:
        producer.close(timeout=10)


def test_a_batch_is_not_committed_under_a_generation_whose_assignment_it_has_not_applied(
    kafka_bootstrap: str, two_partitions: TwoPartitions, tmp_path: Path
) -> None:
    t = two_partitions
    source, out, p0, p1, group = t.source, t.out, t.p0, t.p1, t.group

    held = HeldAssignor(source)
    other = new_consumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        partition_assignment_strategy=[held],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=30_000,
    )
    ws = settings(kafka_bootstrap, tmp_path, source, group_id=group, delivery="exactly-once")
    assignment = Assignment(lambda lost: None)
    worker = consumers.subscribe(ws, assignment)  # the worker's consumer, as the worker makes it
    assignment.bind(worker.group_metadata)  # as Worker.run does
    sink = OutputSink(lambda: make_producer(ws.kafka, transactional_id=f"tx-{source}"), ws.delivery)
    try:
        other.subscribe([source])
        poll_until(
            [other], lambda got: other.group_metadata().generation_id > 0, 30, "other joined"
        )
        # the other member is the leader (it joined first): it gives the worker both partitions
        batch = poll_until(
            [worker, other], lambda got: worker.assignment() == {p0, p1}, 60, "worker assigned"
        )
        batch += poll_until([worker], lambda got: len(batch) + len(got) >= 10, 30, "the batch")
        polled_in = worker.group_metadata()

        # the other member asks for a rebalance whose assignment moves p1 to it, held back
        held.plan = {OTHER: [1], b"": [0]}
        held.released.clear()
        other._coordinator.request_rejoin()
        other.poll(timeout_ms=0)
        # the worker goes on collecting: its heartbeat hears of the rebalance, a poll sends its
        # JoinGroup, and the answer moves its generation on while its SyncGroup waits
        poll_until(
            [worker],
            lambda got: worker.group_metadata().generation_id > polled_in.generation_id,
            30,
            "the worker's JoinGroup answered",
        )
        assert worker.assignment() == {p0, p1}, "the new assignment is not applied yet"

        # the batch's collection ends here; the other member takes p1 and fetches its start
        held.released.set()
        reread = poll_until([other], lambda got: other.assignment() == {p1}, 30, "p1 moved")
        reread += poll_until([other], lambda got: bool(reread or got), 30, "the other reading p1")

        sink.begin()
        for rec in batch:
            sink.send(out, rec.value)
        offsets = next_offsets(batch)
        try:  # under the membership Worker._process_once commits a batch under
            sink.commit(worker, offsets, assignment.membership)
        except CommitRejected:
            pass  # the transaction is aborted: the new owners read the batch again
        else:
            pytest.fail(
                f"the batch's offsets {offsets} were committed under generation "
                f"{worker.group_metadata().generation_id}, in which p1 belongs to the other "
                f"member, which has read offsets {[r.offset for r in reread]} of it again"
            )
    finally:
        held.released.set()
        sink.close()
        consumers.close_consumer(worker)
        other.close(autocommit=False)


def test_offsets_refused_in_one_transaction_are_not_committed_by_the_next(
    kafka_bootstrap: str, two_partitions: TwoPartitions, tmp_path: Path
) -> None:
    """kafka-python 3.0.12 keeps offsets the broker refused (the member was removed from the
    group) in its transaction manager and sends them with the next transaction's offsets.
    A worker resumed after its session expired thus rolled a partition it no longer owned back
    to its stale offset, and the owner's next fetch re-read 527 records
    (test_reliability_rebalance[exactly-once], once in 20 runs)."""
    t = two_partitions
    source, out, p0, p1, group = t.source, t.out, t.p0, t.p1, t.group
    ws = settings(  # a short session: the worker is noticed gone in seconds
        kafka_bootstrap, tmp_path, source, group_id=group, delivery="exactly-once",
        session_timeout_ms=6_000,
    )  # fmt: skip
    assignment = Assignment(lambda lost: None)
    worker = consumers.subscribe(ws, assignment)
    assignment.bind(worker.group_metadata)
    other = new_consumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=30_000,
    )
    sink = OutputSink(lambda: make_producer(ws.kafka, transactional_id=f"tx-{source}"), ws.delivery)
    try:
        batch = poll_until([worker], lambda got: len(got) >= 10, 30, "the batch")
        # the worker stops heartbeating, as when its process is frozen: its session expires
        # and the other member takes both partitions, reads on and commits past the batch
        worker._coordinator._disable_heartbeat()
        other.subscribe([source])
        read = poll_until([other], lambda got: other.assignment() == {p0, p1}, 60, "takeover")
        t.send(range(10, 20))
        read += poll_until([other], lambda got: len(read) + len(got) >= 20, 30, "the other reading")
        other.commit(offsets=next_offsets(read))
        sink.begin()
        sink.send(out, b"the stale batch")
        with pytest.raises(CommitRejected, match="UnknownMemberId"):
            sink.commit(worker, next_offsets(batch), assignment.membership)

        # the worker joins again (as after any refusal) and commits a batch of its new partition
        consumers.rejoin_fresh(worker, ws, assignment)
        poll_until(
            [worker, other],
            lambda got: len(worker.assignment()) == 1 and len(other.assignment()) == 1,
            60,
            "one partition each",
        )
        (mine,) = worker.assignment()
        (theirs,) = other.assignment()
        sink.begin()
        sink.send(out, b"the next batch")
        sink.commit(worker, {mine: OffsetAndMetadata(10, "", -1)}, assignment.membership)
        assert other.committed(theirs) == 10, "the refused offset came back with the next one"
    finally:
        sink.close()
        consumers.close_consumer(worker)
        other.close(autocommit=False)
