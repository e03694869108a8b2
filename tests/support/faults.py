"""Fault injection for the reliability tests: real worker processes, a producer that rides out
broker restarts, freezing a worker mid-batch, and accounting through
``pipeline.alert_consumers.audit``.

Sizes and durations scale with ``RELIABILITY_SCALE`` (default 1: the short form every
``make test`` runs; docs/reliability.md gives the full-scale commands).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from pipeline.alert_consumers.audit import AuditReport, audit
from pipeline.devstack.localkafka import free_ports
from pipeline.kafka.settings import KafkaSettings
from tests.support.workers import NAME, numeric_records, wait_for

SCALE = float(os.environ.get("RELIABILITY_SCALE", "1"))
SCALED_TIMEOUT = pytest.mark.timeout(int(300 * max(1.0, SCALE)))  # pytest-timeout's 300 s
# a slow run with no short form: left out of the default run, run by ``-m slow``
# (tests/conftest.py); for a fault's second delivery mode when the first one shows as much
FULL_RUN_ONLY = pytest.mark.slow(default_run=False)


def scaled(n: float) -> int:
    """``n`` times RELIABILITY_SCALE, at least 1."""
    return max(1, round(n * SCALE))


# --------------------------------------------------------------------------- worker processes


def worker_env(
    bootstrap: str,
    store: Path,
    source: str,
    *,
    group: str,
    prefix: str | None = None,
    delivery: str = "at-least-once",
    **extra: str,
) -> dict[str, str]:
    """Environment of a ``python -m pipeline run`` subprocess: outputs ``<prefix>-scores``,
    ``-dlq`` and ``-alerts``, one torch thread, the metrics server on a free loopback port."""
    prefix = prefix or group
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env = base | {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_ALERT_TOPIC": f"{prefix}-alerts",
        "PIPELINE_DLQ_TOPIC": f"{prefix}-dlq",
        "PIPELINE_SCORES_TOPIC": f"{prefix}-scores",
        "PIPELINE_GROUP_ID": group,
        "PIPELINE_START_FROM": "earliest",
        "PIPELINE_DELIVERY": delivery,
        "PIPELINE_MODEL_STORE": str(store),
        "PIPELINE_MODEL_NAME": NAME,
        "PIPELINE_ID_FIELD": "id",
        "PIPELINE_DEVICE": "cpu",
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(free_ports(1)[0]),
        "PIPELINE_BATCH__MAX_SIZE": "64",
        "PIPELINE_BATCH__MAX_WAIT_MS": "100",
        "PIPELINE_RETRY_BACKOFF_S": "0.2",
        "PIPELINE_SESSION_TIMEOUT_MS": "6000",  # a killed member is noticed in seconds
    }
    return env | extra


class WorkerProcess:
    """``python -m pipeline run`` in its own process; stderr (JSON logs) to a file."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, *args: str) -> None:
        self.env = env
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.out_path = workdir / f"{name}.out"
        self.port = int(env["PIPELINE_METRICS_PORT"])
        with self.log_path.open("ab") as err, self.out_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run", *args],
                env=env,
                cwd=workdir,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metric(self, name: str, **labels: str) -> float:
        """A sample from /metrics; 0 while the server is not up (or the process is frozen)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                body = r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0.0
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None

    def consumed(self) -> float:
        return self.metric("pipeline_records_consumed_total")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"{self.name} did not exit in {timeout_s}s:\n{self.tail()}"
            ) from exc

    def stop(self, timeout_s: float = 90) -> int:
        """SIGTERM and wait: the worker drains, commits and exits."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def summary(self) -> dict[str, Any]:
        """The run summary the worker printed on a clean exit."""
        lines = self.out_path.read_text().strip().splitlines()
        assert lines, f"{self.name} printed no summary:\n{self.tail()}"
        return dict(json.loads(lines[-1]))

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"msg": line})
        return out

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class Workers:
    """Every worker process a test started; all are killed at the end whatever happened."""

    workdir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, env: dict[str, str], name: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(env, self.workdir, name, *args)
        self.started.append(worker)
        return worker

    def cleanup(self) -> None:
        for worker in self.started:
            worker.ensure_dead()


# --------------------------------------------------------------------------- producing


class SteadyProducer:
    """Sends ``total`` numeric records (ids r-000000...) at ``rate`` per second from a thread.

    Idempotent, acks=all, retrying for two minutes: it rides out a broker restart. ``acked``
    counts records the broker acknowledged, ``failed`` those it never did."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        total: int,
        rate: float,
        values: Callable[[int], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.topic, self.total, self.rate = topic, total, rate
        self.values = values or numeric_value
        self.sent = self.acked = self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer = KafkaProducer(
            **config,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            retries=2**31 - 1,
            delivery_timeout_ms=180_000,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=1000,
            max_block_ms=180_000,
        )
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.total):
            if self._stop.is_set():
                break
            key, value = self.values(i)
            future = self._producer.send(self.topic, key=key, value=value)
            future.add_callback(self._ok).add_errback(self._err)
            self.sent += 1
            ahead = started + (i + 1) / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def _ok(self, _: Any) -> None:
        with self._lock:
            self.acked += 1

    def _err(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.errors.append(repr(exc))

    def done_sending(self) -> bool:
        return not self._thread.is_alive()

    def finish(self, timeout_s: float = 200) -> int:
        """Wait until everything is sent and acknowledged (or failed); returns acked."""
        self._thread.join(timeout_s)
        self._producer.flush(timeout=timeout_s)
        self._producer.close(timeout=10)
        assert self.acked + self.failed == self.sent, (self.acked, self.failed, self.sent)
        return self.acked

    def stop_sending(self) -> None:
        """End the stream here (one sized for the longest fault); ``finish`` then waits for
        the acks of what was sent."""
        self._stop.set()
        self._thread.join(30)

    def abort(self) -> None:
        self.stop_sending()
        self._producer.close(timeout=5)


_BODIES: list[bytes] = []


def numeric_value(i: int) -> tuple[bytes, bytes]:
    """Record ``i``: key ``r-000000i``, value one of 1000 precomputed numeric records (so a
    producer thread can outpace a worker); each names a machine ``m0``..``m12`` (``m12``
    has no model in the per-entity fault runs; a single model ignores the field)."""
    if not _BODIES:
        records = numeric_records(1000, seed=7)
        _BODIES.extend(
            msgspec.json.encode(r | {"machine": f"m{j % 13}"}) for j, r in enumerate(records)
        )
    return f"r-{i:07d}".encode(), _BODIES[i % 1000]


# --------------------------------------------------------------------------- observing


class OffsetProbe:
    """Cheap repeated looks at a topic's end offsets and a group's commits (reused clients).

    Its clients retry a broker that was down at least once a second, as the worker's and the
    SteadyProducer do (``reconnect_backoff_max_ms``): with kafka-python's own 30 s a look
    after a broker restart could block for many seconds, time the test only waited on the
    probe (a look at the commits in the broker-restart test returned after 16 s once)."""

    def __init__(self, config: dict[str, Any], group: str | None = None) -> None:
        config = {"reconnect_backoff_max_ms": 1000} | config
        self._hw = KafkaConsumer(**config, enable_auto_commit=False)
        self._lso = KafkaConsumer(
            **config, enable_auto_commit=False, isolation_level="read_committed"
        )
        self._group = (
            KafkaConsumer(**config, group_id=group, enable_auto_commit=False) if group else None
        )

    def partitions(self, topic: str) -> list[TopicPartition]:
        ids = wait_for(lambda: self._hw.partitions_for_topic(topic), 60, f"topic {topic}")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    def high_water(self, topic: str) -> int:
        return sum(self._hw.end_offsets(self.partitions(topic)).values())

    def open_transaction(self, topic: str) -> bool:
        parts = self.partitions(topic)
        hw, lso = self._hw.end_offsets(parts), self._lso.end_offsets(parts)
        return any(lso[tp] < hw[tp] for tp in parts)

    def committed(self, topic: str) -> int:
        assert self._group is not None
        return sum(self._group.committed(tp) or 0 for tp in self.partitions(topic))

    def all_committed(self, topic: str) -> bool:
        assert self._group is not None
        parts = self.partitions(topic)
        end = self._hw.end_offsets(parts)
        return all((self._group.committed(tp) or 0) == end[tp] for tp in parts)

    def close(self) -> None:
        for consumer in (self._hw, self._lso, self._group):
            if consumer is not None:
                consumer.close()


def freeze_when(
    worker: WorkerProcess, caught: Callable[[], bool], tries: int = 600, settle_s: float = 0.05
) -> int:
    """SIGSTOP the worker at random moments until ``caught()`` holds while it is frozen
    (e.g. a batch's output is written but not committed); returns the attempts it took and
    leaves the worker frozen. Raises when it never happens."""
    for attempt in range(1, tries + 1):
        time.sleep(random.uniform(0.0, 0.08))
        worker.signal(signal.SIGSTOP)
        time.sleep(settle_s)  # requests already on the wire land first
        if caught():
            return attempt
        worker.signal(signal.SIGCONT)
    raise AssertionError(f"never caught {worker.name} mid-batch in {tries} tries")


def account(
    kafka: KafkaSettings,
    source: str,
    prefix: str,
    *,
    group: str | None = None,
    timeout_s: float = 90,
) -> AuditReport:
    """Audit ``source`` against ``<prefix>-scores`` / ``-dlq`` once no transaction is open
    (a read_committed reader sees all the output); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = audit(kafka, [source], f"{prefix}-scores", f"{prefix}-dlq", group_id=group)
        if report.settled or time.monotonic() > deadline:
            assert report.settled, f"transactions still open: {report.open_transactions}"
            return report
        time.sleep(1)


def assert_accounted(
    bootstrap: str, source: str, group: str, total: int, *, no_duplicates: bool
) -> AuditReport:
    """Every one of the ``total`` records of ``source`` scored or dead-lettered by ``group``
    (its outputs ``<group>-scores``/``-dlq``), none lost; none twice where ``no_duplicates``
    (exactly-once, or a clean handover)."""
    report = account(KafkaSettings(bootstrap_servers=bootstrap), source, group, group=group)
    assert (report.records, report.due, report.lost) == (total, total, 0), report.as_dict()
    if no_duplicates:
        assert report.duplicates == 0, report.as_dict()
    return report


def finish_and_account(
    producer: SteadyProducer,
    probe: OffsetProbe,
    worker: WorkerProcess,
    *,
    bootstrap: str,
    source: str,
    group: str,
    scenario: str,
    faults: str,
    no_duplicates: bool,
    total: int | None = None,
    recover: Callable[[], object] | None = None,
    check: Callable[[WorkerProcess], dict[str, Any]] | None = None,
    replayed: bool = False,
    **numbers: Any,
) -> AuditReport:
    """The end every fault run shares, written once so none of them skips a step: wait until
    the producer's records are acknowledged (``total`` of them, or whatever it sent before
    ``stop_sending``), undo the fault (``recover``), wait until the group committed every
    record, ``check`` the worker while it still runs (what it returns is recorded), stop it
    cleanly, account for every record (none twice where ``no_duplicates``; at least one
    twice where ``replayed``: the fault must have landed between output and commit) and
    record the scenario's numbers. Call it inside the test's ``try`` whose ``finally``
    aborts the producer and closes the probe."""
    sent = producer.finish()
    assert producer.failed == 0, producer.errors[:3]
    assert sent == (producer.sent if total is None else total), (sent, producer.sent, total)
    if recover is not None:
        recover()
    wait_for(lambda: probe.all_committed(source), 180, "every record committed")
    checked = check(worker) if check is not None else {}
    assert worker.stop() == 0, worker.tail()
    report = assert_accounted(bootstrap, source, group, sent, no_duplicates=no_duplicates)
    if replayed:
        assert report.duplicates > 0, report.as_dict()
    record_result(
        scenario, sent=sent, faults=faults, lost=report.lost, duplicates=report.duplicates,
        scored=report.scored, dead_lettered=report.dead_lettered, **numbers, **checked,
    )  # fmt: skip
    return report


def record_result(scenario: str, **numbers: Any) -> None:
    """Append a scenario's numbers to ``$RELIABILITY_REPORT`` (JSON lines), if set: the
    source of the table in docs/reliability.md."""
    path = os.environ.get("RELIABILITY_REPORT")
    if not path:
        return
    line = {"scenario": scenario, "scale": SCALE, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(path, "a") as out:
        out.write(json.dumps(line | numbers) + "\n")
