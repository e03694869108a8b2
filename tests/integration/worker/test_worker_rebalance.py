"""Two workers in one consumer group: a rebalance while a batch is being collected."""

from __future__ import annotations

import time

import pytest

from pipeline.worker.loop import Worker
from pipeline.worker.settings import BatchSettings
from tests.support.kafka import committed_and_end, fully_committed
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


def test_revoked_partitions_are_not_processed_by_their_old_owner(
    kafka_bootstrap, make_topic, tmp_path
):
    """Worker A gathers a long batch from all 4 partitions; B joins meanwhile and takes two.
    A must drop B's records from its batch: every record is scored exactly once."""
    publish(tmp_path)
    source, scores = make_topic(partitions=4), make_topic(partitions=2)
    records = numeric_records(400)
    produce_records(kafka_bootstrap, source, records)
    long_batches = settings(
        kafka_bootstrap,
        tmp_path,
        source,
        scores_topic=scores,
        batch={"max_size": 100_000, "max_wait_ms": 10_000},
    )
    a = Background(Worker(long_batches), idle_timeout_s=3)
    wait_for(a.worker.is_ready, 30, "worker A assigned")
    time.sleep(0.5)  # A is now holding the records of all four partitions in its batch
    assert a.value("pipeline_batches_total") == 0
    b = Background(
        Worker(long_batches.model_copy(update={"batch": BatchSettings(max_size=64)})),
        # B's join completes only once A rejoins, after A's next heartbeat (3 s apart); under
        # load that took longer than 3 s, B gave up idle before it had partitions and A's
        # 10 s batch then took everything (B consumed 0). Idle counts from B's start.
        idle_timeout_s=12,
    )
    # stopped once every record is committed: B's 12 s idle timeout is a bound for its join,
    # waiting it out after the work is done proves nothing
    wait_for(lambda: fully_committed(kafka_bootstrap, long_batches.group_id, source), 60, "commits")
    summary_a, summary_b = a.stop(60), b.stop(60)

    scored = [e["record_id"] for e in events(kafka_bootstrap, scores)]
    assert len(scored) == len(set(scored)), "a record was scored by two members"
    assert sorted(scored) == sorted(r["id"] for r in records)  # each exactly once
    assert summary_a.consumed + summary_b.consumed == 400
    assert summary_b.consumed > 0
    assert a.value("pipeline_records_revoked_total") > 0  # the scenario did happen
    ends = committed_and_end(kafka_bootstrap, long_batches.group_id, source)
    assert all(committed == end for committed, end in ends.values())
