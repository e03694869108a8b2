"""Delivery against the real broker: exactly-once visibility, failures leave offsets alone,
failed batches are retried, fatal errors stop the worker at once."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.contract.exceptions import KafkaFatalError, KafkaIOError
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.sink import OutputSink, next_offsets
from tests.support.kafka import committed_and_end, read_all
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


def fully_committed(bootstrap: str, group: str, topic: str) -> bool:
    return all(c == e for c, e in committed_and_end(bootstrap, group, topic).values())


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
        records: list = []

        def polled_all() -> bool:
            for batch in consumer.poll(500).values():
                records.extend(batch)
            return len(records) >= 5

        wait_for(polled_all, 30, "the 5 records")
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


def test_a_fenced_transactional_producer_stops_the_worker_without_retries(
    kafka_bootstrap, make_topic, tmp_path
):
    publish(tmp_path)
    source = make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(20))
    txn_id = f"tx-{source}"
    s = settings(
        kafka_bootstrap, tmp_path, source, delivery="exactly-once", transactional_id=txn_id
    )
    bg = Background(Worker(s), idle_timeout_s=30)
    wait_for(lambda: fully_committed(kafka_bootstrap, s.group_id, source), 60, "first commit")

    zombie_killer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    zombie_killer.init_transactions()  # a second replica with the same id fences the first
    try:
        produce_records(kafka_bootstrap, source, numeric_records(20, start=20))
        with pytest.raises(KafkaFatalError, match="ProducerFencedError"):
            bg.join(60)
    finally:
        zombie_killer.close()
    assert (
        sum(
            bg.value("pipeline_batch_failures_total", {"stage": st})
            for st in ("deliver", "commit", "process")
        )
        == 1
    )
    assert committed(kafka_bootstrap, s.group_id, source) == {0: 20}
