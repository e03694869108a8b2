"""alerts tail / alerts sink / the example consumer, against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import msgspec
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer
from kafka.admin import NewTopic

from pipeline.alert_consumers.sinks import JsonlSink, ParquetSink, SinkError, run_sink
from pipeline.alert_consumers.tail import AlertFilter, Cooldown, tail
from pipeline.alert_consumers.webhook import WebhookSink
from pipeline.contract.alerts import build_event, encode_event
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.loop import Worker
from tests.support.cli import run_module
from tests.support.factories import numeric_spec, publish_model
from tests.support.kafka import committed_and_end
from tests.support.workers import NAME, numeric_records, produce_records
from tests.support.workers import settings as worker_settings

ROOT = Path(__file__).parents[3]


def alert(offset, key="k", score=2.0, model=("m", "v1"), ts=None):
    return build_event(
        source=("records", 0, offset, ts or int(time.time() * 1000)),
        key=key.encode(),
        record_id=f"r-{offset}",
        score=score,
        threshold=1.0,
        model=model,
        top_features=[("temp", 1.5)],
        total_error=4.0,
        detected_at="2026-01-01T00:00:00.000Z",
    )


def send(bootstrap, topic, events, timestamp_ms=None, raw=()):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for e in events:
            producer.send(topic, encode_event(e), key=e["key"].encode(), timestamp_ms=timestamp_ms)
        for value in raw:
            producer.send(topic, value, timestamp_ms=timestamp_ms)
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_tail_filters_and_starts_where_asked(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    old = int(time.time() * 1000) - 3 * 3_600_000
    send(kafka_bootstrap, topic, [alert(0, ts=old), alert(1, ts=old)], timestamp_ms=old)
    send(kafka_bootstrap, topic, [alert(2, score=5.0), alert(3, model=("m", "v2"))], raw=[b"junk"])

    got: list[dict] = []
    stats = tail(kafka, topic, got.append, keep=AlertFilter(), start="beginning", idle_timeout_s=1)
    assert sorted(e["source"]["offset"] for e in got) == [0, 1, 2, 3]
    assert stats.invalid == 1

    got.clear()
    since = int(time.time() * 1000) - 3_600_000
    tail(kafka, topic, got.append, keep=AlertFilter(since_ms=since, version="v1"), idle_timeout_s=1)
    assert [e["source"]["offset"] for e in got] == [2]

    got.clear()  # default: only alerts produced after the tail started
    ready = threading.Event()
    runner = threading.Thread(
        target=tail,
        args=(kafka, topic, got.append),
        kwargs={"keep": AlertFilter(min_score=3), "idle_timeout_s": 3, "on_ready": ready.set},
    )
    runner.start()
    assert ready.wait(30)
    send(kafka_bootstrap, topic, [alert(10, score=4.0), alert(11, score=1.5)])
    runner.join(60)
    assert [e["source"]["offset"] for e in got] == [10]


def test_cli_tail_prints_json_lines_when_piped_with_cooldown(kafka_bootstrap, make_topic):
    topic = make_topic()
    t0 = int(time.time() * 1000)
    events = [alert(i, key=k, ts=t0 + i * 1000) for i, k in enumerate("aabab")]
    send(kafka_bootstrap, topic, events)
    done = run_module(
        "pipeline", "alerts", "tail", "--bootstrap", kafka_bootstrap, "--topic", topic,
        "--from-beginning", "--cooldown", "60", "--idle-timeout", "2", cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["key"], e["source"]["offset"]) for e in shown] == [("a", 0), ("b", 2)]
    assert "3 suppressed by cooldown" in done.stderr

    pretty = run_module(
        "pipeline", "alerts", "tail", "--bootstrap", kafka_bootstrap, "--topic", topic,
        "--from-beginning", "--format", "pretty", "--max", "1", cwd=ROOT,
    )  # fmt: skip
    assert pretty.returncode == 0, pretty.stderr
    assert "score 2 (threshold 1)" in pretty.stdout and "m/v1" in pretty.stdout


def test_jsonl_sink_commits_after_writing_and_drops_duplicates(
    kafka_bootstrap, make_topic, tmp_path
):
    topic = make_topic(partitions=2)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    events = [alert(i, key=f"k{i}") for i in range(6)]
    send(kafka_bootstrap, topic, [*events, events[1], events[4]])  # a replayed pair
    out = tmp_path / "alerts.jsonl"
    stats = run_sink(kafka, topic, "g1", JsonlSink(out), idle_timeout_s=1.5)
    lines = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    assert sorted(e["event_id"] for e in lines) == sorted(e["event_id"] for e in events)
    assert stats.written == 6 and stats.duplicates == 2
    assert all(c == end for c, end in committed_and_end(kafka_bootstrap, "g1", topic).values())

    # a new group over the same file: ids already in the file are not written again
    stats = run_sink(kafka, topic, "g2", JsonlSink(out), idle_timeout_s=1.5)
    assert stats.written == 0 and stats.duplicates == 8
    assert len(out.read_bytes().splitlines()) == 6


def test_parquet_sink_with_filter_and_cli(kafka_bootstrap, make_topic, tmp_path):
    topic = make_topic()
    send(kafka_bootstrap, topic, [alert(i, score=1.0 + i) for i in range(5)])
    directory = tmp_path / "pq"
    done = run_module(
        "pipeline", "alerts", "sink", "--bootstrap", kafka_bootstrap, "--topic", topic,
        "--group", "pq-sink", "--parquet", str(directory), "--min-score", "3",
        "--idle-timeout", "2", cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["written"] == 3
    table = pq.read_table(directory)
    assert sorted(table.column("source_offset").to_pylist()) == [2, 3, 4]
    assert table.column("top_features").to_pylist()[0][0]["name"] == "temp"
    assert json.loads(table.column("event").to_pylist()[0])["model"] == {
        "name": "m",
        "version": "v1",
    }
    stats = run_sink(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic,
        "pq-sink-2",
        ParquetSink(directory),
        idle_timeout_s=1.5,
    )
    assert stats.written == 2 and stats.duplicates == 3  # seeded from the files


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict]]] = []
    fail_next = 0
    status_when_failing = 503

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_next > 0:
            cls.fail_next -= 1
            self.send_response(cls.status_when_failing)
            self.end_headers()
            return
        cls.received.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def webhook_server():
    handler = type("Hook", (_Hook,), {"received": [], "fail_next": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler
    server.shutdown()
    server.server_close()


def test_webhook_sink_posts_each_alert_retries_and_stops_uncommitted(
    kafka_bootstrap, make_topic, webhook_server
):
    url, hook = webhook_server
    topic = make_topic()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    events = [alert(i) for i in range(3)]
    send(kafka_bootstrap, topic, events)
    hook.fail_next = 2  # two 503s: retried
    stats = run_sink(kafka, topic, "hook", WebhookSink(url, backoff_s=0.01), idle_timeout_s=1.5)
    assert stats.written == 3
    assert [key for key, _ in hook.received] == [e["event_id"] for e in events]
    assert hook.received[0][1] == json.loads(encode_event(events[0]))

    send(kafka_bootstrap, topic, [alert(7)])
    hook.fail_next, hook.status_when_failing = 1, 400  # refused: not retried, not committed
    with pytest.raises(SinkError, match="HTTP 400"):
        run_sink(kafka, topic, "hook", WebhookSink(url, backoff_s=0.01), idle_timeout_s=1.5)
    committed, end = committed_and_end(kafka_bootstrap, "hook", topic)[0]
    assert (committed, end) == (3, 4)


def test_example_consumer(kafka_bootstrap, make_topic, tmp_path):
    topic = make_topic(partitions=2)
    events = [alert(i, key=f"k{i}") for i in range(4)]
    send(kafka_bootstrap, topic, [*events, events[0]])
    out = tmp_path / "example.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for expected in (4, 0):  # the second run finds everything handled and committed
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "alert_consumer.py"), "--bootstrap",
             kafka_bootstrap, "--topic", topic, "--group", "ex", "--out", str(out),
             "--idle-timeout", "2"],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["handled"] == expected
    assert len(out.read_text().splitlines()) == 4


def test_cooldown_in_sink(kafka_bootstrap, make_topic, tmp_path):
    topic = make_topic()
    t0 = int(time.time() * 1000)
    send(kafka_bootstrap, topic, [alert(i, key="same", ts=t0 + i) for i in range(4)])
    stats = run_sink(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic,
        "cd",
        JsonlSink(tmp_path / "a.jsonl"),
        cooldown=Cooldown(window_s=300),
        idle_timeout_s=1.5,
    )
    assert (stats.written, stats.suppressed) == (1, 3)


def recreate_topic(admin, topic: str, partitions: int = 1) -> None:
    """Delete ``topic`` and create it again under the same name (offsets start at 0 again)."""
    from kafka.errors import TopicAlreadyExistsError

    admin.delete_topics([topic])
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_topics(
                [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                timeout_ms=30_000,
            )
            break
        except TopicAlreadyExistsError:  # the deletion is still under way
            assert time.monotonic() < deadline, f"{topic} was not deleted in 60 s"
            time.sleep(0.5)
    admin.wait_for_topics([topic], timeout_ms=30_000)


def test_alerts_of_a_recreated_input_topic_are_not_dropped_as_duplicates(
    kafka_bootstrap, kafka_admin, make_topic, tmp_path
):
    """The same topic/partition/offset in a new incarnation of the input topic is another
    record: its alert must reach the file sink, not be dropped as a replay of the old one."""
    publish_model(tmp_path, numeric_spec(4), name=NAME, threshold=0.0)  # every record alerts
    source = make_topic()
    out = tmp_path / "alerts.jsonl"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    for incarnation in (1, 2):
        if incarnation == 2:
            recreate_topic(kafka_admin, source)
        produce_records(kafka_bootstrap, source, numeric_records(5, start=10 * incarnation))
        s = worker_settings(kafka_bootstrap, tmp_path, source, group_id=f"w{incarnation}-{source}")
        assert Worker(s).run(idle_timeout_s=1.5).anomalies == 5
        stats = run_sink(kafka, s.alert_topic, "archive", JsonlSink(out), idle_timeout_s=1.5)
        assert (stats.written, stats.duplicates) == (5, 0), f"incarnation {incarnation}"
    lines = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    assert sorted(e["record_id"] for e in lines) == [
        f"r-{i:06d}" for i in (*range(10, 15), *range(20, 25))
    ]
    assert sorted(e["source"]["offset"] for e in lines) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
