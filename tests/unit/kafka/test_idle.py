"""The idle clock of ``--idle-timeout`` (pure logic: a fake clock, no consumer)."""

from __future__ import annotations

from pipeline.kafka.idle import IdleClock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_does_not_run_while_the_group_join_is_pending() -> None:
    t = Clock()
    idle = IdleClock(2.0, assignment_wait_s=60.0, clock=t)
    t.now += 30
    assert not idle.expired(has_partitions=False)
    t.now += 1  # partitions arrive: the timeout counts from here
    assert not idle.expired(has_partitions=True)
    t.now += 1.5
    assert not idle.expired(has_partitions=True)
    t.now += 1
    assert idle.expired(has_partitions=True)


def test_records_restart_the_clock() -> None:
    t = Clock()
    idle = IdleClock(2.0, clock=t)
    assert not idle.expired(has_partitions=True)
    t.now += 1.9
    idle.activity()
    t.now += 1.9
    assert not idle.expired(has_partitions=True)
    t.now += 0.2
    assert idle.expired(has_partitions=True)


def test_a_reassignment_restarts_the_clock() -> None:
    t = Clock()
    idle = IdleClock(2.0, assignment_wait_s=0.0, clock=t)
    assert not idle.expired(has_partitions=True)
    t.now += 1.5
    assert not idle.expired(has_partitions=False)  # revoked in a rebalance
    t.now += 1.0
    assert not idle.expired(has_partitions=True)  # assigned again: a fresh start
    t.now += 2.1
    assert idle.expired(has_partitions=True)


def test_without_partitions_after_the_assignment_wait_the_clock_runs() -> None:
    t = Clock()
    idle = IdleClock(2.0, assignment_wait_s=10.0, clock=t)
    t.now += 9
    assert not idle.expired(has_partitions=False)
    t.now += 1.5
    assert not idle.expired(has_partitions=False)  # 10.5 s: the wait is over, clock from 9 s
    t.now += 1
    assert idle.expired(has_partitions=False)


def test_no_timeout_never_expires() -> None:
    t = Clock()
    idle = IdleClock(None, clock=t)
    t.now += 1e6
    assert not idle.expired(has_partitions=True)
