"""Faults against real worker processes and a real broker, with every input record accounted
for afterwards (``pipeline.audit``: scores topic + dead-letter topic against the input).

- a worker SIGKILLed mid-batch and restarted: nothing lost; duplicates only at-least-once;
- a worker SIGTERMed mid-batch: it finishes and commits the batch, no duplicates;
- two workers in a group, one SIGKILLed: its partitions move to the survivor;
- the broker stopped and started again mid-stream: nothing lost, no duplicates exactly-once.

Sizes scale with RELIABILITY_SCALE (docs/reliability.md)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.localkafka import free_ports
from pipeline.settings import KafkaSettings
from tests.faults import (
    OffsetProbe,
    SteadyProducer,
    WorkerProcess,
    Workers,
    account,
    freeze_when,
    record_result,
    scaled,
    worker_env,
)
from tests.workerutil import publish, wait_for

pytestmark = pytest.mark.kafka
MODES = ["at-least-once", "exactly-once"]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def uncommitted_output(probe: OffsetProbe, source: str, prefix: str) -> bool:
    """At-least-once: output on the topics beyond what the group committed, i.e. a batch
    whose sends are durable and whose offsets are not (fresh topics: no earlier replays)."""
    written = probe.high_water(f"{prefix}-scores") + probe.high_water(f"{prefix}-dlq")
    return written > probe.committed(source)


@pytest.mark.parametrize("delivery", MODES)
def test_a_worker_killed_mid_batch_and_restarted_loses_nothing(
    kafka_bootstrap, make_topic, tmp_path, workers, delivery
):
    publish(tmp_path)
    source = make_topic(3)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(kafka_bootstrap, tmp_path, source, group=group, delivery=delivery)
    total = scaled(3000)
    producer = SteadyProducer(config, source, total, rate=600)
    probe = OffsetProbe(config, group)
    try:
        first = workers.start(env, "first")
        wait_for(lambda: first.consumed() >= min(300, total // 5), 120, "first records scored")
        if delivery == "exactly-once":
            tries = freeze_when(first, lambda: probe.open_transaction(f"{group}-scores"))
        else:
            tries = freeze_when(first, lambda: uncommitted_output(probe, source, group))
        first.kill()  # SIGKILL while frozen mid-batch
        killed_at = first_consumed = probe.committed(source)
        second = workers.start(env, "second")  # same group, same host: a restarted replica
        if delivery == "exactly-once":
            # the restart aborts the transaction the killed worker left open at once; the
            # broker would otherwise hold read_committed readers back for its 60 s timeout
            wait_for(lambda: not probe.open_transaction(f"{group}-scores"), 30, "abort")
        sent = producer.finish()
        wait_for(lambda: probe.all_committed(source), 180, "every record committed")
        assert second.stop() == 0, second.tail()
    finally:
        producer.abort()
        probe.close()
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, group, group=group)
    assert (report.records, report.due, report.lost) == (total, total, 0), report.as_dict()
    assert sent == total
    if delivery == "exactly-once":
        assert report.duplicates == 0, report.as_dict()
    else:
        assert report.duplicates > 0  # the kill did land between output and commit
    record_result(
        f"worker SIGKILL mid-batch + restart ({delivery})",
        sent=total, faults=f"1 SIGKILL (caught mid-batch after {tries} freezes)",
        lost=report.lost, duplicates=report.duplicates, scored=report.scored,
        dead_lettered=report.dead_lettered, committed_at_kill=killed_at,
    )  # fmt: skip
    del first_consumed


def test_a_worker_sigtermed_mid_batch_finishes_it_and_leaves_no_duplicates(
    kafka_bootstrap, make_topic, tmp_path, workers
):
    publish(tmp_path)
    source = make_topic(3)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(kafka_bootstrap, tmp_path, source, group=group)
    total = scaled(2000)
    producer = SteadyProducer(config, source, total, rate=600)
    probe = OffsetProbe(config, group)
    try:
        first = workers.start(env, "first")
        wait_for(lambda: first.consumed() >= min(300, total // 5), 120, "first records scored")
        tries = freeze_when(first, lambda: uncommitted_output(probe, source, group))
        first.signal(signal.SIGTERM)
        first.signal(signal.SIGCONT)
        assert first.wait(60) == 0, first.tail()
        assert any(e.get("msg") == "stop requested" for e in first.logs())
        second = workers.start(env, "second")
        producer.finish()
        wait_for(lambda: probe.all_committed(source), 180, "every record committed")
        assert second.stop() == 0, second.tail()
    finally:
        producer.abort()
        probe.close()
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, group, group=group)
    assert (report.records, report.due, report.lost, report.duplicates) == (total, total, 0, 0)
    assert first.summary()["consumed"] + second.summary()["consumed"] == total
    record_result(
        "worker SIGTERM mid-batch + restart (at-least-once)",
        sent=total, faults=f"1 SIGTERM (caught mid-batch after {tries} freezes)",
        lost=report.lost, duplicates=report.duplicates,
    )  # fmt: skip


def test_two_workers_one_killed_its_partitions_move_to_the_survivor(
    kafka_bootstrap, make_topic, tmp_path, workers
):
    publish(tmp_path)
    source = make_topic(4)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(
        kafka_bootstrap, tmp_path, source, group=group, PIPELINE_SESSION_TIMEOUT_MS="6000"
    )
    total = scaled(3000)
    producer = SteadyProducer(config, source, total, rate=500)
    probe = OffsetProbe(config, group)
    try:
        a = workers.start(env, "a")
        b = workers.start(env | {"PIPELINE_METRICS_PORT": str(free_ports(1)[0])}, "b")
        wait_for(lambda: a.consumed() > 0 and b.consumed() > 0, 120, "both workers scoring")
        wait_for(lambda: len(assigned(a)) == len(assigned(b)) == 2, 60, "two partitions each")
        b.kill()
        killed_at = time.monotonic()
        wait_for(lambda: len(assigned(a)) == 4, 60, "the survivor owns every partition")
        moved_s = time.monotonic() - killed_at
        producer.finish()
        wait_for(lambda: probe.all_committed(source), 180, "every record committed")
        assert a.stop() == 0, a.tail()
    finally:
        producer.abort()
        probe.close()
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, group, group=group)
    assert (report.records, report.due, report.lost) == (total, total, 0), report.as_dict()
    record_result(
        "two workers, one SIGKILLed (at-least-once)",
        sent=total, faults="1 SIGKILL of one of two group members", lost=report.lost,
        duplicates=report.duplicates, partitions_moved_after_s=round(moved_s, 1),
    )  # fmt: skip


def assigned(worker: WorkerProcess) -> set[str]:
    """The partitions the worker owns now, from its "partitions assigned/revoked" log lines."""
    owned: set[str] = set()
    for entry in worker.logs():
        parts = set(filter(None, str(entry.get("partitions", "")).split(",")))
        if entry.get("msg") == "partitions assigned":
            owned |= parts
        elif entry.get("msg") == "partitions revoked":
            owned -= parts
    return owned
