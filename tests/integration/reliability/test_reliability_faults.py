"""Faults against real worker processes and a real broker, with every input record accounted
for afterwards (``pipeline.alert_consumers.audit``: scores topic + dead-letter topic against the
input).

- a worker SIGKILLed mid-batch and restarted: nothing lost; duplicates only at-least-once;
- a worker SIGTERMed mid-batch: it finishes and commits the batch, no duplicates;
- two workers in a group, one SIGKILLed: its partitions move to the survivor;
- the broker stopped and started again mid-stream: nothing lost, no duplicates exactly-once.

Sizes scale with RELIABILITY_SCALE (docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from functools import partial

import pytest

from pipeline.devstack.localkafka import free_ports, open_admin
from tests.support.entities import publish_entity_set
from tests.support.faults import (
    SCALE,
    SCALED_TIMEOUT,
    OffsetProbe,
    SteadyProducer,
    WorkerProcess,
    assert_accounted,
    finish_and_account,
    freeze_when,
    numeric_value,
    record_result,
    scaled,
    worker_env,
)
from tests.support.kafka import create_topic, produce
from tests.support.workers import NAME, SPEC, publish, wait_for

pytestmark = [pytest.mark.kafka, SCALED_TIMEOUT]
MODES = ["at-least-once", "exactly-once"]
STREAM_S = 12.0  # the input keeps arriving this long, so the fault lands mid-stream


def uncommitted_output(probe: OffsetProbe, source: str, prefix: str) -> bool:
    """At-least-once: output on the topics beyond what the group committed, i.e. a batch
    whose sends are durable and whose offsets are not (fresh topics: no earlier replays)."""
    written = probe.high_water(f"{prefix}-scores") + probe.high_water(f"{prefix}-dlq")
    return written > probe.committed(source)


@pytest.mark.parametrize(
    ("delivery", "models"),
    [(mode, "single") for mode in MODES] + [("at-least-once", "per-entity")],
)
def test_a_worker_killed_mid_batch_and_restarted_loses_nothing(
    kafka_bootstrap, make_topic, tmp_path, workers, delivery, models
):
    if models == "single":
        publish(tmp_path)
    else:  # records name machines m0..m11 (numeric_value), one model each plus the fallback
        publish_entity_set(tmp_path, SPEC, [f"m{i}" for i in range(12)], name=NAME)
    source = make_topic(3)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(kafka_bootstrap, tmp_path, source, group=group, delivery=delivery)
    total = scaled(3000)
    producer = SteadyProducer(config, source, total, rate=total / STREAM_S)
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
        exactly_once = delivery == "exactly-once"
        finish_and_account(
            producer, probe, second, bootstrap=kafka_bootstrap, source=source, group=group,
            scenario=f"worker SIGKILL mid-batch + restart ({delivery}, {models} models)",
            faults=f"1 SIGKILL (caught mid-batch after {tries} freezes)",
            no_duplicates=exactly_once, total=total,
            replayed=not exactly_once,  # the kill did land between output and commit
            committed_at_kill=killed_at,
        )  # fmt: skip
    finally:
        producer.abort()
        probe.close()
    del first_consumed


def test_a_worker_sigtermed_mid_batch_finishes_it_and_leaves_no_duplicates(
    kafka_bootstrap, make_topic, tmp_path, workers
):
    publish(tmp_path)
    source = make_topic(3)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(kafka_bootstrap, tmp_path, source, group=group)
    total = scaled(3000)
    producer = SteadyProducer(config, source, total, rate=total / STREAM_S)
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
        finish_and_account(
            producer, probe, second, bootstrap=kafka_bootstrap, source=source, group=group,
            scenario="worker SIGTERM mid-batch + restart (at-least-once)",
            faults=f"1 SIGTERM (caught mid-batch after {tries} freezes)",
            no_duplicates=True, total=total,
        )  # fmt: skip
    finally:
        producer.abort()
        probe.close()
    assert first.summary()["consumed"] + second.summary()["consumed"] == total


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
    producer = SteadyProducer(config, source, total, rate=total / STREAM_S)
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
        finish_and_account(
            producer, probe, a, bootstrap=kafka_bootstrap, source=source, group=group,
            scenario="two workers, one SIGKILLed (at-least-once)",
            faults="1 SIGKILL of one of two group members", no_duplicates=False, total=total,
            partitions_moved_after_s=round(moved_s, 1),
        )  # fmt: skip
    finally:
        producer.abort()
        probe.close()


def scored_at_least(worker: WorkerProcess, n: float) -> bool:
    return worker.consumed() >= n


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


@pytest.mark.slow
def test_the_broker_restarting_mid_stream_loses_nothing(private_kafka, tmp_path, workers):
    """One broker, stopped for ``outage_s`` and started again (same port and data) while a
    producer streams and two workers score, one per delivery mode, from a backlog in six
    partitions. The broker goes away while the at-least-once worker holds a batch whose output
    is written and whose offsets are not committed; client timeouts are short and the liveness
    timeout shorter than the outage. Nothing is lost, exactly-once adds no duplicate, /healthz
    stays 200 throughout and both workers score again within seconds of the broker's return."""
    broker = private_kafka()
    bootstrap = broker.bootstrap
    publish(tmp_path)
    with open_admin(bootstrap) as admin:
        source = create_topic(admin, 6)
    restarts = scaled(1)
    outage_s = float(os.environ.get("RELIABILITY_OUTAGE_S", 15.0 * min(SCALE, 4.0)))
    backlog, streamed = scaled(1500), scaled(2500)
    total = backlog + streamed
    produce(bootstrap, source, (numeric_value(i) for i in range(backlog)))
    short_timeouts = {
        "PIPELINE_KAFKA__REQUEST_TIMEOUT_MS": "5000",
        "PIPELINE_KAFKA__BOOTSTRAP_TIMEOUT_MS": "3000",
        "PIPELINE_MAX_BATCH_RETRIES": "3",
        "PIPELINE_BATCH__MAX_SIZE": "32",
        "PIPELINE_LIVENESS_TIMEOUT_S": "5",  # the outage lasts longer than this
    }
    groups = {mode: f"{mode}-{source}" for mode in MODES}
    envs = {
        mode: worker_env(bootstrap, tmp_path, source, group=group, delivery=mode, **short_timeouts)
        for mode, group in groups.items()
    }
    config = {"bootstrap_servers": bootstrap}
    producer = SteadyProducer(config, source, streamed, rate=streamed / (restarts * outage_s + 15))
    probes = {mode: OffsetProbe(config, group) for mode, group in groups.items()}
    alo_probe = probes["at-least-once"]
    try:
        procs = {mode: workers.start(env, mode) for mode, env in envs.items()}
        alo = procs["at-least-once"]
        for proc in procs.values():
            wait_for(partial(scored_at_least, proc, 100), 120, f"{proc.name} scoring")
        health: dict[str, Counter[int | None]] = {mode: Counter() for mode in MODES}
        resume_s: list[float] = []
        for _ in range(restarts):
            freeze_when(alo, partial(uncommitted_output, alo_probe, source, groups[alo.name]))
            broker.stop()
            alo.signal(signal.SIGCONT)
            outage_ends = time.monotonic() + outage_s
            while time.monotonic() < outage_ends:
                for mode, proc in procs.items():
                    health[mode][proc.http_status("/healthz")] += 1
                time.sleep(0.5)
            for mode, proc in procs.items():
                assert proc.proc.poll() is None, f"{mode} exited during the outage: {proc.tail()}"
            broker.start()
            back = time.monotonic()
            for mode, proc in procs.items():
                resumed = partial(scored_at_least, proc, proc.consumed() + 1)
                wait_for(resumed, 120, f"{mode} resumes")
            resume_s.append(time.monotonic() - back)
        sent = producer.finish()
        for mode, probe in probes.items():
            wait_for(partial(probe.all_committed, source), 240, f"{mode}: all committed")
        for proc in procs.values():
            proc.signal(signal.SIGTERM)  # both drain and exit at once, not one after the other
        for proc in procs.values():
            assert proc.wait(90) == 0, proc.tail()
    finally:
        producer.abort()
        for probe in probes.values():
            probe.close()
    assert sent == streamed and producer.failed == 0
    # alive throughout: a worker waiting for the broker is not stuck, and a restart would
    # not bring the broker back
    assert health == {mode: {200: sum(h.values())} for mode, h in health.items()}, health
    # both score again within seconds of the broker being back (kafka-python's own reconnect
    # backoff grows to 30 s during an outage)
    assert max(resume_s) < 20, resume_s
    for mode, group in groups.items():
        exactly_once = mode == "exactly-once"
        report = assert_accounted(bootstrap, source, group, total, no_duplicates=exactly_once)
        failures = sum(1 for e in procs[mode].logs() if e.get("msg") == "batch failed, will retry")
        record_result(
            f"broker restart mid-stream ({mode})",
            sent=total, faults=f"{restarts} broker stop/start, {outage_s:.0f} s down each",
            lost=report.lost, duplicates=report.duplicates, failed_attempts=failures,
            resumed_after_s=[round(r, 1) for r in resume_s],
        )  # fmt: skip
