"""Backpressure: a producer faster than a real worker process for ``burst_s`` seconds. The
worker's memory stays flat while its lag grows (it reads a bounded batch at a time, Kafka keeps
the backlog), the lag drains once the burst ends, and every record is accounted for.

Default: a 10 s burst (RELIABILITY_SCALE scales it); the soak runs it for minutes:
``RELIABILITY_SOAK_S=300 pytest -m slow tests/integration/reliability/test_reliability_load.py``."""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil
import pytest

from pipeline.kafka.settings import KafkaSettings
from tests.support.faults import (
    SCALE,
    OffsetProbe,
    SteadyProducer,
    account,
    record_result,
    worker_env,
)
from tests.support.workers import publish, wait_for

BURST_S = float(os.environ.get("RELIABILITY_SOAK_S", 10 * SCALE))
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(int(300 + 4 * BURST_S))]


class RssSampler:
    """Samples a process's resident set size once a second (monotonic time, bytes)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            except psutil.NoSuchProcess:
                return

    def between(self, t0: float, t1: float) -> list[int]:
        return [rss for t, rss in self.samples if t0 <= t < t1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
def test_a_producer_faster_than_the_worker_keeps_its_memory_flat_and_the_lag_drains(
    kafka_bootstrap, make_topic, tmp_path, workers
):
    burst_s = BURST_S
    publish(tmp_path)
    source = make_topic(3)
    group = f"g-{source}"
    config = {"bootstrap_servers": kafka_bootstrap}
    env = worker_env(kafka_bootstrap, tmp_path, source, group=group, PIPELINE_BATCH__MAX_SIZE="32")
    probe = OffsetProbe(config, group)
    worker = workers.start(env, "worker")
    rss = RssSampler(worker.pid)
    try:
        # how fast is the worker here and now (the machine is shared)? A backlog, timed
        warmup_n = 10_000
        SteadyProducer(config, source, warmup_n, rate=1e9).finish()
        wait_for(lambda: worker.consumed() >= 1000, 120, "worker scoring")
        t0, c0 = time.monotonic(), worker.consumed()
        wait_for(lambda: probe.all_committed(source), 120, "backlog drained")
        capacity = (warmup_n - c0) / (time.monotonic() - t0)
        rate = 2.0 * capacity
        started = time.monotonic()
        burst = SteadyProducer(config, source, int(rate * burst_s), rate=rate)
        lag_max = 0.0
        while not burst.done_sending():
            lag_max = max(lag_max, probe.high_water(source) - probe.committed(source))
            time.sleep(1)
        burst_end = time.monotonic()
        sent = warmup_n + burst.finish()
        drain_started = time.monotonic()
        wait_for(lambda: probe.all_committed(source), 60 + 2 * burst_s, "lag drains")
        drain_s = time.monotonic() - drain_started
        assert worker.stop() == 0, worker.tail()
    finally:
        rss.stop()
        probe.close()
    # memory: the second half of the burst (lag highest) against its first quarter
    early = rss.between(started, started + (burst_end - started) / 4)
    late = rss.between(started + (burst_end - started) / 2, burst_end + drain_s)
    base, peak = statistics.median(early), max(late)
    growth = peak / base - 1
    assert lag_max > capacity * burst_s * 0.3, f"the producer never got ahead: {lag_max}"
    assert growth < 0.10, f"RSS grew {growth:.1%}: {base / 2**20:.0f} -> {peak / 2**20:.0f} MiB"
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, group, group=group)
    assert (report.records, report.lost) == (sent, 0), report.as_dict()
    record_result(
        "backpressure: producer 2x faster than the worker",
        sent=sent, faults=f"{burst_s:.0f} s burst at {rate:.0f}/s vs ~{capacity:.0f}/s capacity",
        lost=report.lost, duplicates=report.duplicates, max_lag=int(lag_max),
        drain_s=round(drain_s, 1), rss_base_mib=round(base / 2**20),
        rss_peak_mib=round(peak / 2**20), rss_growth=round(growth, 4),
    )  # fmt: skip
