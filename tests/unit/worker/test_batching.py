"""Collector logic against a scripted source and a fake clock (no Kafka semantics involved)."""

from collections import deque
from types import SimpleNamespace

import pytest

from pipeline.worker.batching import BatchCollector


class ScriptedSource:
    """Each poll advances the fake clock by what it would have waited and returns a script step."""

    def __init__(self, steps, clock):
        self.steps = deque(steps)
        self.clock = clock
        self.calls: list[tuple[int, int]] = []

    def poll(self, timeout_ms=0, max_records=None):
        self.calls.append((timeout_ms, max_records))
        if not self.steps:
            self.clock.t += timeout_ms / 1000
            return {}
        delay_s, records = self.steps[0]
        if delay_s > timeout_ms / 1000:  # nothing arrives within this poll's timeout
            self.clock.t += timeout_ms / 1000
            self.steps[0] = (delay_s - timeout_ms / 1000, records)
            return {}
        self.steps.popleft()
        self.clock.t += delay_s
        return {"tp": records[:max_records]} if records else {}


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def recs(*offsets):
    return [SimpleNamespace(offset=o) for o in offsets]


def test_batch_closes_at_max_size():
    clock = Clock()
    src = ScriptedSource([(0, recs(1, 2)), (0, recs(3, 4, 5))], clock)
    batch = BatchCollector(src, max_size=4, max_wait_s=10, clock=clock).collect()
    assert [r.offset for r in batch.records] == [1, 2, 3, 4]
    assert src.calls[1][1] == 2  # asks only for what still fits


def test_batch_closes_at_deadline_measured_from_first_record():
    clock = Clock()
    src = ScriptedSource([(0.5, recs(1)), (0.03, recs(2)), (0.03, recs(3))], clock)
    collector = BatchCollector(src, max_size=100, max_wait_s=0.05, idle_poll_s=1, clock=clock)
    batch = collector.collect()
    assert [r.offset for r in batch.records] == [1, 2]
    assert batch.first_record_at == 0.5


def test_idle_source_gives_none_so_callers_can_check_stop():
    clock = Clock()
    src = ScriptedSource([], clock)
    assert BatchCollector(src, 10, 0.05, idle_poll_s=0.2, clock=clock).collect() is None
    assert src.calls == [(200, 10)]


def stamped(ts_ms, *offsets):
    return [SimpleNamespace(offset=o, timestamp=ts_ms) for o in offsets]


def test_time_already_spent_in_kafka_counts_towards_the_deadline():
    clock = Clock()
    wall = 1_000.0  # seconds since the epoch, fake
    # record 1 was produced 30 ms ago (it queued while the previous batch was processed)
    src = ScriptedSource(
        [(0, stamped(1_000_000 - 30, 1)), (0.015, recs(2)), (0.01, recs(3))], clock
    )
    collector = BatchCollector(
        src, max_size=100, max_wait_s=0.05, clock=clock, wall_clock=lambda: wall + clock.t
    )
    batch = collector.collect()
    assert [r.offset for r in batch.records] == [1, 2]  # closed 20 ms after it was seen
    assert abs(batch.first_record_at - (-0.03)) < 1e-9


def test_an_overdue_batch_closes_after_its_first_poll_without_zero_timeout_polls():
    clock = Clock()
    old = stamped(1, 1, 2)  # produced long ago: a backlog
    src = ScriptedSource([(0, old), (0, recs(3, 4))], clock)
    collector = BatchCollector(
        src, max_size=100, max_wait_s=0.05, clock=clock, wall_clock=lambda: 1e6
    )
    batch = collector.collect()
    assert [r.offset for r in batch.records] == [1, 2]
    assert all(timeout > 0 for timeout, _ in src.calls)


def prec(partition, offset, topic="t"):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset)


class RevokingSource(ScriptedSource):
    """Calls ``on_poll(n)`` before answering the n-th poll, like a rebalance inside poll()."""

    def __init__(self, steps, clock, on_poll):
        super().__init__(steps, clock)
        self.on_poll = on_poll

    def poll(self, timeout_ms=0, max_records=None):
        self.on_poll(len(self.calls))
        return super().poll(timeout_ms, max_records)


def test_revoked_partitions_leave_the_batch_being_collected():
    clock = Clock()
    collector: BatchCollector | None = None

    def revoke_partition_1_on_second_poll(n):
        if n == 1:
            assert collector.drop_partitions([SimpleNamespace(topic="t", partition=1)]) == 2

    first = [prec(0, 10), prec(1, 20), prec(1, 21), prec(0, 11)]
    src = RevokingSource(
        [(0, first), (0.01, [prec(0, 12)])], clock, revoke_partition_1_on_second_poll
    )
    collector = BatchCollector(src, max_size=100, max_wait_s=0.05, idle_poll_s=1, clock=clock)
    batch = collector.collect()
    assert [(r.partition, r.offset) for r in batch.records] == [(0, 10), (0, 11), (0, 12)]
    assert collector.dropped == 2


def test_a_batch_emptied_by_revocation_is_not_returned():
    clock = Clock()
    collector: BatchCollector | None = None

    def revoke_all(n):
        if n == 1:
            collector.drop_partitions([SimpleNamespace(topic="t", partition=0)])

    src = RevokingSource([(0, [prec(0, 1), prec(0, 2)])], clock, revoke_all)
    collector = BatchCollector(src, max_size=100, max_wait_s=0.05, idle_poll_s=1, clock=clock)
    assert collector.collect() is None
    assert collector.drop_partitions([SimpleNamespace(topic="t", partition=0)]) == 0  # idle


def test_a_stop_request_closes_the_batch_early_with_what_was_gathered():
    clock = Clock()
    stop = []
    src = RevokingSource(
        [(0, [prec(0, 1)]), (0.1, [prec(0, 2)]), (5, [prec(0, 3)])],
        clock,
        lambda n: stop.append(True) if n == 2 else None,
    )
    collector = BatchCollector(
        src,
        max_size=100,
        max_wait_s=30,
        idle_poll_s=0.2,
        clock=clock,
        should_stop=lambda: bool(stop),
    )
    batch = collector.collect()
    assert [r.offset for r in batch.records] == [1, 2]
    assert clock.t < 1  # did not wait for the 30 s deadline


def test_a_poll_error_mid_batch_leaves_the_gathered_records_for_rewinding():
    clock = Clock()

    def fail_second_poll(n):
        if n == 1:
            raise RuntimeError("broker went away")

    src = RevokingSource([(0, [prec(0, 1), prec(1, 7)])], clock, fail_second_poll)
    collector = BatchCollector(src, max_size=100, max_wait_s=0.05, idle_poll_s=1, clock=clock)
    with pytest.raises(RuntimeError):
        collector.collect()
    assert [(r.partition, r.offset) for r in collector.abandoned] == [(0, 1), (1, 7)]
