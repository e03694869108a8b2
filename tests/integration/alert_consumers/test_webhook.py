"""The webhook sink at its edges: redirects, refusals, secrets. Real broker, a real worker's
alerts, real HTTP receivers on loopback and the real `alerts sink` process."""

from __future__ import annotations

from pathlib import Path

from pipeline.worker.loop import Worker
from tests.support.cli import run_module
from tests.support.factories import numeric_spec, publish_model
from tests.support.http_receiver import Reply, receiver
from tests.support.kafka import committed_and_end
from tests.support.workers import NAME, numeric_records, produce_records
from tests.support.workers import settings as worker_settings

ROOT = Path(__file__).parents[3]
TOKEN = "Bearer tok-7f3a9c"


def worker_alerts(bootstrap: str, store: Path, source: str, n: int = 5) -> str:
    """Run a real worker over ``n`` records that all alert; return its alert topic."""
    publish_model(store, numeric_spec(4), name=NAME, threshold=0.0)
    produce_records(bootstrap, source, numeric_records(n))
    s = worker_settings(bootstrap, store, source)
    assert Worker(s).run(idle_timeout_s=1.5).anomalies == n
    return s.alert_topic


def sink(bootstrap: str, topic: str, group: str, url: str, *extra: str):
    return run_module(
        "pipeline", "alerts", "sink", "--bootstrap", bootstrap, "--topic", topic,
        "--group", group, "--webhook", url, "--header", f"Authorization: {TOKEN}",
        "--idle-timeout", "2", *extra, cwd=ROOT,
    )  # fmt: skip


def test_a_redirect_to_another_origin_is_not_followed_and_not_counted_delivered(
    kafka_bootstrap, make_topic, tmp_path
):
    """urllib turns a POST answered 302 into a GET that carries Authorization to wherever
    Location points, and counts the final 200 as delivered."""
    topic = worker_alerts(kafka_bootstrap, tmp_path, make_topic())
    with receiver(lambda _: Reply(200)) as other:
        moved = Reply(302, {"Location": f"{other.url}/landing"})
        with receiver(lambda _: moved) as hook:
            done = sink(kafka_bootstrap, topic, "pager", f"{hook.url}/alerts")
    leaked = [(r.method, r.headers.get("Authorization")) for r in other.requests]
    assert leaked == [], f"the redirect was followed to another origin: {leaked}"
    assert done.returncode == 5, done.stderr
    assert "302" in done.stderr
    assert committed_and_end(kafka_bootstrap, "pager", topic)[0][0] in (None, 0)
