"""Where a new group starts (``PIPELINE_START_FROM``), against a real broker: ``latest`` (the
default) skips the history, ``earliest`` reads it, ``timestamp`` starts at the first record at
or after it; in each case the start is committed at once, so a worker restarted before its
first batch continues from there instead of resetting again."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from pipeline.worker.loop import RunSummary, Worker
from pipeline.worker.settings import WorkerSettings
from tests.support.workers import (
    Background,
    events,
    numeric_records,
    produce_records,
    publish,
    settings,
    wait_for,
)

pytestmark = pytest.mark.kafka


def committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset: int | None = consumer.committed(TopicPartition(topic, 0))
        return offset
    finally:
        consumer.close()


def test_the_default_is_latest_and_the_start_is_committed_before_any_record(
    kafka_bootstrap, make_topic, tmp_path
):
    assert WorkerSettings.model_fields["start_from"].default == "latest"
    publish(tmp_path)
    source = make_topic(1)
    produce_records(kafka_bootstrap, source, numeric_records(30))  # history, before the group
    scores = f"{source}-scores"
    s = settings(kafka_bootstrap, tmp_path, source, start_from="latest", scores_topic=scores)
    worker = Background(Worker(s))
    try:
        # pinned with nothing consumed yet: a restart now would not reset to a newer "latest"
        wait_for(lambda: committed(kafka_bootstrap, s.group_id, source) == 30, 60, "start commit")
        produce_records(kafka_bootstrap, source, numeric_records(5, start=1000))
        wait_for(lambda: worker.value("pipeline_records_consumed_total") >= 5, 60, "new records")
    finally:
        summary = worker.stop()
    assert summary.consumed == 5
    scored = sorted(e["record_id"] for e in events(kafka_bootstrap, scores))
    assert scored == [f"r-{i:06d}" for i in range(1000, 1005)]


def run_until_committed(bootstrap: str, s: WorkerSettings, source: str, offset: int) -> RunSummary:
    """Run a worker until its group committed ``offset``, then stop it (not an idle timeout:
    waiting one out after the work is done proves nothing)."""
    bg = Background(Worker(s), idle_timeout_s=60)
    try:
        wait_for(
            lambda: committed(bootstrap, s.group_id, source) == offset, 60, f"commit of {offset}"
        )
    finally:
        summary = bg.stop()
    return summary


def test_earliest_reads_the_history(kafka_bootstrap, make_topic, tmp_path):
    publish(tmp_path)
    source = make_topic(1)
    produce_records(kafka_bootstrap, source, numeric_records(30))
    s = settings(kafka_bootstrap, tmp_path, source, start_from="earliest")
    summary = run_until_committed(kafka_bootstrap, s, source, 30)
    assert summary.consumed == 30
    assert committed(kafka_bootstrap, s.group_id, source) == 30


def test_timestamp_starts_at_the_first_record_at_or_after_it(kafka_bootstrap, make_topic, tmp_path):
    publish(tmp_path)
    source = make_topic(1)
    produce_records(kafka_bootstrap, source, numeric_records(10))
    time.sleep(0.05)
    since_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce_records(kafka_bootstrap, source, numeric_records(7, start=500))
    s = settings(
        kafka_bootstrap, tmp_path, source, start_from="timestamp", start_timestamp_ms=since_ms
    )
    summary = run_until_committed(kafka_bootstrap, s, source, 17)
    assert summary.consumed == 7
    assert committed(kafka_bootstrap, s.group_id, source) == 17


def test_the_idle_timeout_counts_only_once_the_worker_has_partitions(
    kafka_bootstrap, make_topic, tmp_path
):
    """Joining a group takes round trips, seconds on a loaded host, and as long as a member
    that stopped polling has to rejoin: an idle timeout that ran during the join ended runs
    with records waiting, having consumed nothing. Here a member that never polls again holds
    the worker's join up for its 6 s rebalance timeout, three times the idle timeout."""
    publish(tmp_path)
    source = make_topic(2)
    produce_records(kafka_bootstrap, source, numeric_records(40))
    s = settings(kafka_bootstrap, tmp_path, source, start_from="earliest")
    stale = KafkaConsumer(
        source,
        bootstrap_servers=kafka_bootstrap,
        group_id=s.group_id,
        enable_auto_commit=False,
        max_poll_interval_ms=6000,
        session_timeout_ms=6000,
    )
    try:
        wait_for(lambda: bool(stale.poll(timeout_ms=200) is not None and stale.assignment()),
                 60, "the stale member joined")  # fmt: skip
        started = time.monotonic()
        summary = Worker(s).run(idle_timeout_s=2)
        waited = time.monotonic() - started
    finally:
        stale.close()
    assert summary.consumed == 40
    assert waited > 4, f"the join was not held up ({waited:.1f} s): the test shows nothing"
