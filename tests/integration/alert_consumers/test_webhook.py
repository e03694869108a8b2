"""The webhook sink at its edges: redirects, refusals, secrets. Real broker, a real worker's
alerts, real HTTP receivers on loopback and the real `alerts sink` process."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import closing
from functools import partial
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaProducer

from pipeline.alert_consumers.sinks import SinkError
from pipeline.alert_consumers.webhook import WebhookSink
from pipeline.contract.alerts import build_event, encode_event
from pipeline.worker.loop import Worker
from tests.support.cli import run_module, run_module_until
from tests.support.factories import numeric_spec, publish_model
from tests.support.http_receiver import Received, Reply, receiver
from tests.support.kafka import committed_and_end, fully_committed
from tests.support.workers import NAME, Background, numeric_records, produce_records, wait_for
from tests.support.workers import settings as worker_settings

ROOT = Path(__file__).parents[3]
TOKEN = "Bearer tok-7f3a9c"
# seconds without records before a sink stops: a first fetch under load 13 on two
# cores took over 2 s, which ended runs that had records waiting
IDLE_S = 6
HOOK_PATH = "/services/T0001/B0002/hooksecret9d2e"  # a Slack-style URL: the path is the key


def send_alerts(bootstrap: str, topic: str, n: int) -> list[dict]:
    """``n`` alert events on ``topic``, as a worker writes them (built with the contract)."""
    now = int(time.time() * 1000)
    events = [alert_event(i, timestamp_ms=now) for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for event in events:
            producer.send(topic, encode_event(event), key=event["key"].encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    return events


def worker_alerts(bootstrap: str, store: Path, source: str, n: int = 5) -> str:
    """Run a real worker over ``n`` records that all alert; return its alert topic."""
    publish_model(store, numeric_spec(4), name=NAME, threshold=0.0)
    produce_records(bootstrap, source, numeric_records(n))
    s = worker_settings(bootstrap, store, source)
    # stopped once all n are committed, not after IDLE_S without records (that proves nothing)
    bg = Background(Worker(s), idle_timeout_s=60)
    try:
        wait_for(lambda: bg.value("pipeline_records_consumed_total") >= n, 60, f"{n} records")
    finally:
        summary = bg.stop()
    assert summary.anomalies == summary.consumed == n
    return s.alert_topic


def sink(bootstrap: str, topic: str, group: str, url: str, *extra: str):
    return run_module(*sink_argv(bootstrap, topic, group, url, *extra), cwd=ROOT)


def sink_argv(bootstrap: str, topic: str, group: str, url: str, *extra: str) -> list[str]:
    return [
        "pipeline", "alerts", "sink", "--bootstrap", bootstrap, "--topic", topic,
        "--group", group, "--webhook", url, "--header", f"Authorization: {TOKEN}",
        "--idle-timeout", str(IDLE_S), *extra,
    ]  # fmt: skip


def sink_until_committed(
    bootstrap: str, topic: str, group: str, url: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``sink``, stopped with SIGTERM once its group committed the whole topic (not after
    IDLE_S without records); a sink that fails ends on its own."""
    return run_module_until(
        *sink_argv(bootstrap, topic, group, url, *extra),
        done=partial(fully_committed, bootstrap, group, topic),
        cwd=ROOT,
    )


def test_a_redirect_to_another_origin_is_not_followed_and_not_counted_delivered(
    kafka_bootstrap, make_topic, tmp_path
):
    """urllib turned a POST answered 302 into a GET that carried Authorization to wherever
    Location pointed, and counted the final 200 as delivered. Now each alert is refused as
    a redirect (dead-lettered with the reason) and nothing reaches the other origin."""
    topic = worker_alerts(kafka_bootstrap, tmp_path, make_topic())
    dead = tmp_path / "refused.jsonl"
    with receiver(lambda _: Reply(200)) as other:
        moved = Reply(302, {"Location": f"{other.url}/landing"})
        with receiver(lambda _: moved) as hook:
            done = sink_until_committed(
                kafka_bootstrap, topic, "pager", f"{hook.url}/alerts", "--dead-letter", str(dead)
            )
    leaked = [(r.method, r.headers.get("Authorization")) for r in other.requests]
    assert leaked == [], f"the redirect was followed to another origin: {leaked}"
    assert done.returncode == 0, done.stderr
    assert [(r.method, r.path) for r in hook.requests] == [("POST", "/alerts")] * 5
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(d["reason"], d["status"]) for d in letters] == [("redirect", 302)] * 5
    assert letters[0]["detail"] == f"HTTP 302 to {other.url}/*** (not followed)"
    stats = json.loads(done.stdout.splitlines()[-1])
    assert (stats["written"], stats["dead_lettered"]) == (0, 5)
    assert all(c == end for c, end in committed_and_end(kafka_bootstrap, "pager", topic).values())


def test_the_webhook_url_and_header_values_are_never_printed(kafka_bootstrap, make_topic, tmp_path):
    """The URL of a Slack-style hook and the --header values are credentials: not in the
    messages and dead letters of a refused alert, not in the error when retries run out, not
    in the logs of a delivery, not when a header is malformed."""
    topic = make_topic()
    send_alerts(kafka_bootstrap, topic, 2)
    dead = tmp_path / "refused.jsonl"
    outputs = []
    with receiver(lambda _: Reply(400, body=b"invalid_payload")) as hook:
        refused = sink_until_committed(
            kafka_bootstrap, topic, "refused", hook.url + HOOK_PATH, "--dead-letter", str(dead)
        )
        outputs += [refused.stdout + refused.stderr, dead.read_text()]
    assert refused.returncode == 0, refused.stderr
    assert "invalid_payload" in dead.read_text() and f"{hook.url}/***" in refused.stderr
    with receiver(lambda _: Reply(503)) as hook:
        failed = sink(
            kafka_bootstrap, topic, "failed", hook.url + HOOK_PATH, "--dead-letter", str(dead),
            "--webhook-retries", "1",
        )  # fmt: skip
        outputs.append(failed.stdout + failed.stderr)
    assert failed.returncode == 5 and f"{hook.url}/***" in failed.stderr, failed.stderr
    with receiver() as hook:
        delivered = sink_until_committed(
            kafka_bootstrap, topic, "delivered", hook.url + HOOK_PATH, "--dead-letter", str(dead)
        )
        outputs.append(delivered.stdout + delivered.stderr)
    assert delivered.returncode == 0, delivered.stderr
    assert len(hook.requests) == 2
    assert {r.headers["Authorization"] for r in hook.requests} == {TOKEN}
    malformed = run_module(
        "pipeline", "alerts", "sink", "--bootstrap", kafka_bootstrap, "--topic", topic,
        "--webhook", "http://127.0.0.1:9" + HOOK_PATH, "--header", "Authorization " + TOKEN,
        "--dead-letter", str(dead), cwd=ROOT,
    )  # fmt: skip
    assert malformed.returncode == 2
    outputs.append(malformed.stdout + malformed.stderr)
    for text in outputs:
        assert "hooksecret9d2e" not in text and "T0001" not in text, text
        assert "tok-7f3a9c" not in text, text


def alert_event(i: int, timestamp_ms: int = 0) -> dict:
    """Alert ``i`` as a worker writes it (built with the contract)."""
    return build_event(
        source=("records", 0, i, timestamp_ms),
        key=f"k{i}".encode(),
        record_id=f"r-{i}",
        score=2.0,
        threshold=1.0,
        model=("m", "v1"),
        top_features=[("x0", 1.5)],
        total_error=4.0,
        detected_at="2026-01-01T00:00:00.000Z",
    )


def test_a_307_or_308_on_the_same_origin_is_followed_with_the_body_another_origin_is_not():
    def respond(got: Received) -> Reply:
        if got.path == "/old":
            return Reply(307, {"Location": "/new"})
        if got.path == "/new":
            return Reply(308, {"Location": f"{hook.url}/final"})  # absolute, same origin
        return Reply(202)

    with receiver(respond) as hook:
        hs = WebhookSink(hook.url + "/old", headers={"Authorization": TOKEN})
        with closing(hs):
            hs.write([alert_event(0)])
    assert [(r.method, r.path) for r in hook.requests] == [
        ("POST", "/old"),
        ("POST", "/new"),
        ("POST", "/final"),
    ]
    assert {r.body for r in hook.requests} == {msgspec.json.encode(alert_event(0))}

    with receiver() as other:
        moved = Reply(308, {"Location": f"{other.url}/final"})
        with receiver(lambda _: moved) as hook:
            hs = WebhookSink(hook.url + "/old", headers={"Authorization": TOKEN})
            with (
                closing(hs),
                pytest.raises(SinkError, match=r"HTTP 308 to http://127\.0\.0\.1:\d+/\*\*\*"),
            ):
                hs.write([alert_event(1)])
    assert other.requests == []


def test_timeouts_and_5xx_are_retried_then_fail_the_batch():
    def slow(got: Received) -> Reply:
        time.sleep(1.0)
        return Reply(204)

    with receiver(slow) as hook:
        hs = WebhookSink(hook.url, timeout_s=0.2, retries=2, backoff_s=0.01)
        with closing(hs), pytest.raises(SinkError, match=r"failed after 3 attempts.*ReadTimeout"):
            hs.write([alert_event(0)])
    assert len(hook.requests) == 3

    answers = iter([Reply(503), Reply(429, {"Retry-After": "0"}), Reply(500), Reply(200)])
    with receiver(lambda _: next(answers)) as hook:
        hs = WebhookSink(hook.url, retries=3, backoff_s=0.01)
        with closing(hs):
            hs.write([alert_event(0)])
    assert len(hook.requests) == 4


def test_a_refused_alert_goes_to_the_dead_letter_file_and_the_group_goes_on(
    kafka_bootstrap, make_topic, tmp_path
):
    """A 4xx used to exit the sink uncommitted, and every restart replayed the same alert:
    one alert the receiver will never take blocked the group for good."""
    topic = worker_alerts(kafka_bootstrap, tmp_path, make_topic())

    def respond(got: Received) -> Reply:
        if msgspec.json.decode(got.body)["record_id"] == "r-000002":
            return Reply(422, body=b'{"error": "text too long"}')
        return Reply(204)

    dead = tmp_path / "refused.jsonl"
    with receiver(respond) as hook:
        first = sink_until_committed(
            kafka_bootstrap, topic, "pager", hook.url + HOOK_PATH, "--dead-letter", str(dead)
        )
        again = sink(
            kafka_bootstrap, topic, "pager", hook.url + HOOK_PATH, "--dead-letter", str(dead)
        )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1]) | {"batches": 0} == {
        "written": 4, "dead_lettered": 1, "duplicates": 0, "filtered": 0, "suppressed": 0,
        "invalid": 0, "batches": 0,
    }  # fmt: skip
    assert len(hook.requests) == 5  # each alert once: nothing retried, nothing replayed
    assert all(c == end for c, end in committed_and_end(kafka_bootstrap, "pager", topic).values())
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["written"] == 0
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert (letter["reason"], letter["status"]) == ("refused", 422)
    assert "text too long" in letter["detail"]
    assert letter["event"]["record_id"] == "r-000002"
    assert letter["endpoint"] == f"{hook.url}/***"
    assert "refused_at" in letter

    missing = sink(kafka_bootstrap, topic, "pager", hook.url)
    assert missing.returncode == 2 and "--dead-letter" in missing.stderr
