"""Delivery against the real broker: exactly-once visibility, failures leave offsets alone,
failed batches are retried, fatal errors stop the worker at once, a fenced producer is
replaced (a bounded number of times)."""

from __future__ import annotations

import time
from functools import partial

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.contract.exceptions import DeliveryError, KafkaFatalError, KafkaIOError
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.recovery import rebuild_reason
from pipeline.worker.sink import OutputSink, next_offsets
from tests.support.kafka import committed_and_end, fully_committed, read_all
from tests.support.workers import (
    Background,
    events,
    numeric_records,
    offline_scores,
    produce_records,
    publish,
    settings,
    wait_for,
)

pytestmark = pytest.mark.kafka
TINY = {"max.message.bytes": "128"}  # every score event (~300 bytes) is refused


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    return {p: c for p, (c, _) in committed_and_end(bootstrap, group, topic).items()}


def poll_records(consumer, n: int) -> list:
    """Poll until ``n`` records arrived (30 s at most); returns them."""
    records: list = []

    def polled_all() -> bool:
        for batch in consumer.poll(500).values():
            records.extend(batch)
        return len(records) >= n

    wait_for(polled_all, 30, f"the {n} records")
    return records


def set_max_message_bytes(admin, topic: str, value: int) -> None:
    admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(value)})]
    )


def test_exactly_once_output_and_offsets_become_visible_together_at_commit(
    kafka_bootstrap, make_topic
):
    source, out = make_topic(), make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(5))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    group = f"g-{source}"
    consumer = make_consumer(kafka, group, max_poll_records=100)
    sink = OutputSink(lambda: make_producer(kafka, transactional_id=f"tx-{source}"), "exactly-once")
    try:
        consumer.subscribe([source])
        records = poll_records(consumer, 5)
        # an aborted transaction leaves nothing for read_committed readers and no offsets
        sink.begin()
        sink.send(out, b"aborted")
        sink.producer.flush()
        sink.abort()
        sink.begin()
        for rec in records:
            sink.send(out, rec.value, key=rec.key)
        sink.producer.flush()
        assert len(read_all(kafka_bootstrap, out)) == 6  # written, uncommitted
        assert read_all(kafka_bootstrap, out, isolation_level="read_committed") == []
        assert committed(kafka_bootstrap, group, source) == {0: None}

        sink.commit(consumer, next_offsets(records))
        visible = read_all(kafka_bootstrap, out, isolation_level="read_committed")
        assert [r.value for r in visible] == [r.value for r in records]
        assert committed(kafka_bootstrap, group, source) == {0: 5}  # in the same transaction
    finally:
        sink.close()
        consumer.close()


def test_exactly_once_worker_alerts_exactly_the_records_over_the_threshold(
    kafka_bootstrap, make_topic, tmp_path
):
    manifest = publish(tmp_path)
    source = make_topic(partitions=2)
    records = numeric_records(300)
    produce_records(kafka_bootstrap, source, records)
    s = settings(kafka_bootstrap, tmp_path, source, delivery="exactly-once")
    summary = Worker(s).run(idle_timeout_s=1.5)
    assert summary.consumed == 300
    over = offline_scores(records, seed=0) > manifest.threshold.value
    expected = {r["id"] for r, o in zip(records, over, strict=True) if o}
    alerts = events(kafka_bootstrap, s.alert_topic, committed_only=True)
    assert {a["record_id"] for a in alerts} == expected
    assert len(alerts) == len(expected)
    assert fully_committed(kafka_bootstrap, s.group_id, source)


def test_a_failed_batch_leaves_the_committed_offset_unchanged(
    kafka_bootstrap, make_topic, tmp_path
):
    publish(tmp_path)
    source, scores = make_topic(partitions=2), make_topic(config=TINY)
    produce_records(kafka_bootstrap, source, numeric_records(100))
    s = settings(kafka_bootstrap, tmp_path, source, batch={"max_size": 64})
    Worker(s).run(idle_timeout_s=1.5)
    before = committed(kafka_bootstrap, s.group_id, source)
    assert sum(c or 0 for c in before.values()) == 100

    produce_records(kafka_bootstrap, source, numeric_records(100, start=100))
    metrics = PipelineMetrics()
    failing = Worker(s.model_copy(update={"scores_topic": scores, "max_batch_retries": 2}), metrics)
    with pytest.raises(KafkaIOError, match="failed 3 times") as info:
        failing.run(idle_timeout_s=10)
    assert not isinstance(info.value, KafkaFatalError)  # retried first, then gave up
    assert committed(kafka_bootstrap, s.group_id, source) == before
    assert (
        metrics.registry.get_sample_value("pipeline_batch_failures_total", {"stage": "deliver"})
        == 3
    )


def test_a_failed_batch_is_retried_with_a_new_producer_until_it_goes_through(
    kafka_bootstrap, kafka_admin, make_topic, tmp_path
):
    publish(tmp_path)
    source, scores = make_topic(partitions=2), make_topic(config=TINY)
    records = numeric_records(150)
    produce_records(kafka_bootstrap, source, records)
    s = settings(kafka_bootstrap, tmp_path, source, scores_topic=scores, max_batch_retries=50)
    bg = Background(Worker(s), idle_timeout_s=3)
    wait_for(
        lambda: bg.value("pipeline_batch_failures_total", {"stage": "deliver"}) >= 2,
        60,
        "two failed attempts",
    )
    # nothing past the start position (committed once the group is stable: worker.startpos)
    assert set(committed(kafka_bootstrap, s.group_id, source).values()) <= {None, 0}
    set_max_message_bytes(kafka_admin, scores, 1_000_000)  # the operator fixes the topic
    summary = bg.join(60)
    assert summary.consumed == 150  # counted once: failed attempts are not in the summary
    # nor in the metrics: a record counts once it is committed, however many attempts it took
    assert bg.value("pipeline_records_consumed_total") == 150
    assert bg.value("pipeline_records_scored_total") == 150
    assert bg.value("pipeline_batch_size_sum") == 150
    assert bg.value("pipeline_anomalies_total") == summary.anomalies
    assert fully_committed(kafka_bootstrap, s.group_id, source)
    assert {e["record_id"] for e in events(kafka_bootstrap, scores)} == {r["id"] for r in records}


def test_exactly_once_failure_aborts_the_batch_output(kafka_bootstrap, make_topic, tmp_path):
    publish(tmp_path)
    source, scores = make_topic(), make_topic(config=TINY)
    produce_records(kafka_bootstrap, source, numeric_records(50))
    s = settings(
        kafka_bootstrap,
        tmp_path,
        source,
        delivery="exactly-once",
        scores_topic=scores,
        max_batch_retries=1,
    )
    with pytest.raises(KafkaIOError, match="failed 2 times"):
        Worker(s).run(idle_timeout_s=10)
    assert events(kafka_bootstrap, s.alert_topic, committed_only=True) == []
    # nothing past the start position (committed once the group is stable: worker.startpos)
    assert set(committed(kafka_bootstrap, s.group_id, source).values()) <= {None, 0}


def test_a_fence_seen_before_the_commit_is_still_known_as_a_fence(kafka_bootstrap, make_topic):
    """The fence reaches the producer through the sender (AddPartitionsToTxn of the batch's
    first send) before the worker calls commit: kafka-python then refuses the commit with a
    bare KafkaError naming the fence only in its message. The sink's error must still say
    "fenced", or the worker retries a dead producer instead of replacing it (a CI run saw
    this: no rebuild counted, the batch counted as failed)."""
    source, out = make_topic(), make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(3))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    txn_id = f"tx-{source}"
    consumer = make_consumer(kafka, f"g-{source}", max_poll_records=100)
    sink = OutputSink(lambda: make_producer(kafka, transactional_id=txn_id), "exactly-once")
    try:
        consumer.subscribe([source])
        records = poll_records(consumer, 3)
        sink.begin()
        fencer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
        fencer.init_transactions()  # bumps the epoch before the sink's first send
        fencer.close()
        sink.send(out, b"doomed")
        manager = sink.producer._transaction_manager
        wait_for(manager.has_fatal_error, 30, "the sender to see the fence")
        with pytest.raises(DeliveryError) as refused:
            sink.commit(consumer, next_offsets(records))
        assert rebuild_reason(refused.value) == "fenced", repr(refused.value)
    finally:
        sink.close()
        consumer.close()


def test_a_fenced_transactional_producer_is_replaced_and_the_worker_goes_on(
    kafka_bootstrap, make_topic, tmp_path
):
    """Another producer with the worker's transactional id fences it once (as the coordinator
    does when a transaction outlived its timeout): the worker replaces its producer, re-reads
    from the committed offsets and commits the rest; no failed batch, no exit."""
    publish(tmp_path)
    source = make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(20))
    txn_id = f"tx-{source}"
    s = settings(
        kafka_bootstrap, tmp_path, source, delivery="exactly-once", transactional_id=txn_id
    )
    bg = Background(Worker(s), idle_timeout_s=20)
    wait_for(lambda: fully_committed(kafka_bootstrap, s.group_id, source), 60, "first commit")

    fencer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    fencer.init_transactions()  # bumps the epoch: the worker's producer is fenced
    fencer.close()
    produce_records(kafka_bootstrap, source, numeric_records(20, start=20))
    wait_for(lambda: committed(kafka_bootstrap, s.group_id, source) == {0: 40}, 60, "the rest")
    bg.stop()  # not join: the 20 s idle timeout is only a bound, waiting it out proves nothing
    assert bg.value("pipeline_producer_rebuilds_total", {"reason": "fenced"}) == 1
    assert sum(
        bg.value("pipeline_batch_failures_total", {"stage": st})
        for st in ("deliver", "commit", "process")
    ) == 0  # fmt: skip


def test_a_second_live_owner_of_the_transactional_id_stops_the_worker_after_bounded_rebuilds(
    kafka_bootstrap, make_topic, tmp_path
):
    """Something keeps fencing the worker's transactional id (a second replica configured
    with the same id): after 5 rebuilds within 10 minutes the worker stops with
    KafkaFatalError naming the id instead of fencing back and forth forever."""
    publish(tmp_path)
    source = make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(5))
    txn_id = f"tx-{source}"
    s = settings(
        kafka_bootstrap, tmp_path, source, delivery="exactly-once", transactional_id=txn_id,
        transaction_timeout_ms=10_000,
    )  # fmt: skip
    bg = Background(Worker(s), idle_timeout_s=120)
    wait_for(lambda: fully_committed(kafka_bootstrap, s.group_id, source), 60, "first commit")
    fences, deadline = 0, time.monotonic() + 150
    while bg.error is None and bg.summary is None and time.monotonic() < deadline:
        # the worker's new producer is live (it committed) before it is fenced again
        wait_for(
            partial(stopped_or_committed, bg, kafka_bootstrap, s.group_id, source), 60, "commit"
        )
        before = all_rebuilds(bg)
        fencer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
        fencer.init_transactions()
        fencer.close()
        fences += 1
        produce_records(kafka_bootstrap, source, numeric_records(5, start=5 * fences))
        wait_for(partial(stopped_or_rebuilt, bg, before), 60, f"rebuild after fence {fences}")
    with pytest.raises(
        KafkaFatalError, match=f"'{txn_id}' (fenced|stalled) again after 5 rebuilds"
    ):
        bg.join(60)
    assert all_rebuilds(bg) == 5


def all_rebuilds(bg: Background) -> float:
    """Fenced, or stalled: once in a while a call of the fenced producer was only ended by
    its deadline (the transaction timeout, 10 s here) instead of failing at once."""
    return sum(
        bg.value("pipeline_producer_rebuilds_total", {"reason": r}) for r in ("fenced", "stalled")
    )


def stopped_or_rebuilt(bg: Background, before: float) -> bool:
    return bg.error is not None or all_rebuilds(bg) > before


def stopped_or_committed(bg: Background, bootstrap: str, group: str, topic: str) -> bool:
    return bg.error is not None or fully_committed(bootstrap, group, topic)
