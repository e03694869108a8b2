"""Collector logic against a scripted source and a fake clock (no Kafka semantics involved)."""

from collections import deque
from types import SimpleNamespace

from pipeline.batching import BatchCollector


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


def test_an_overdue_batch_still_takes_what_is_available_without_waiting():
    clock = Clock()
    old = stamped(1, 1, 2)  # produced long ago: a backlog
    src = ScriptedSource([(0, old), (0, recs(3, 4)), (0, recs(5)), (0.5, recs(6))], clock)
    collector = BatchCollector(
        src, max_size=100, max_wait_s=0.05, clock=clock, wall_clock=lambda: 1e6
    )
    batch = collector.collect()
    assert [r.offset for r in batch.records] == [1, 2, 3, 4, 5]
    assert all(timeout == 0 for timeout, _ in src.calls[1:])  # never waited once overdue
