"""Models in a running worker (real broker, real store): hot reload through LATEST and the
announce topic, refused versions, shadow scoring, and records of the wrong kind."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec
import pytest

from pipeline.contract.announce import ModelAnnouncement, encode_announcement
from pipeline.contract.artifact import WEIGHTS_FILE, set_latest
from pipeline.contract.deadletter import parse_dead_letter
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from tests.support.factories import mixed_spec, numeric_spec, publish_model
from tests.support.kafka import produce, read_all
from tests.support.workers import (
    NAME,
    Background,
    events,
    numeric_records,
    offline_scores,
    produce_records,
    publish,
    settings,
    wait_for,
)

pytestmark = pytest.mark.kafka


def stage_version(store: Path, tmp: Path, *, corrupt: bool = False, width: int = 4) -> str:
    """Publish a version elsewhere, optionally break it, then move it into ``store`` and point
    LATEST at it (so no worker can see it before it is broken)."""
    staging = tmp / "staging"
    manifest = publish_model(staging, numeric_spec(width), name=NAME, seed=7)
    version_dir = staging / NAME / manifest.version
    if corrupt:
        weights = version_dir / WEIGHTS_FILE
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    shutil.copytree(version_dir, store / NAME / manifest.version)
    set_latest(store, NAME, manifest.version)
    return manifest.version


def info(bg: Background, version: str) -> float:
    return bg.value("pipeline_model_info", {"name": NAME, "version": version})


def consumed(bg: Background, n: int) -> bool:
    return bg.value("pipeline_records_consumed_total") >= n


def alert_versions(bootstrap: str, topic: str) -> dict[str, str]:
    return {e["record_id"]: e["model"]["version"] for e in events(bootstrap, topic)}


def test_a_new_latest_is_served_between_batches_and_broken_ones_are_refused(
    kafka_bootstrap, make_topic, tmp_path
):
    store = tmp_path / "store"
    v1 = publish(store, seed=0, alert_share=0.5).version
    source = make_topic(partitions=2)
    s = settings(kafka_bootstrap, store, source, reload_interval_s=0.2)
    bg = Background(Worker(s), idle_timeout_s=30)
    produce_records(kafka_bootstrap, source, numeric_records(100))
    wait_for(lambda: consumed(bg, 100), 30, "first 100 records")
    assert info(bg, v1) == 1

    # a corrupted weights file, then a model reading other columns: both refused
    bad_checksum = stage_version(store, tmp_path / "a", corrupt=True)
    wait_for(lambda: bg.value("pipeline_model_reloads_total", {"result": "refused"}) >= 1, 10, "1")
    incompatible = stage_version(store, tmp_path / "b", width=5)
    wait_for(lambda: bg.value("pipeline_model_reloads_total", {"result": "refused"}) >= 2, 10, "2")
    produce_records(kafka_bootstrap, source, numeric_records(100, start=100))
    wait_for(lambda: consumed(bg, 200), 30, "records 100-199")
    assert info(bg, v1) == 1  # the old model kept serving
    assert info(bg, bad_checksum) == info(bg, incompatible) == 0

    v2 = publish(store, seed=1, alert_share=0.5).version
    wait_for(lambda: info(bg, v2) == 1, 10, "v2 served")
    produce_records(kafka_bootstrap, source, numeric_records(100, start=200))
    wait_for(lambda: consumed(bg, 300), 30, "records 200-299")
    bg.stop()

    versions = alert_versions(kafka_bootstrap, s.alert_topic)
    assert {v for rid, v in versions.items() if rid < "r-000200"} == {v1}
    assert {v for rid, v in versions.items() if rid >= "r-000200"} == {v2}
    assert info(bg, v1) == 0  # exactly one version series carries the 1
    assert bg.value("pipeline_model_reloads_total", {"result": "loaded"}) == 1
    assert bg.value("pipeline_model_reloads_total", {"result": "refused"}) == 2
    assert bg.value("pipeline_threshold") == pytest.approx(bg.worker.model.threshold)


def test_an_announcement_reloads_at_once_without_polling(kafka_bootstrap, make_topic, tmp_path):
    store = tmp_path / "store"
    v1 = publish(store, seed=0, alert_share=0.5).version
    source, announce = make_topic(partitions=2), make_topic()
    s = settings(
        kafka_bootstrap, store, source, reload_interval_s=0, announce_topic=announce
    )  # polling LATEST is off: only the announcement can trigger the reload
    worker = Worker(s)
    bg = Background(worker, idle_timeout_s=30)
    produce_records(kafka_bootstrap, source, numeric_records(50))
    wait_for(lambda: consumed(bg, 50), 30, "first records")
    wait_for(lambda: bg.value("pipeline_ready") == 1, 10, "ready")

    v2 = publish(store, seed=1, alert_share=0.5).version
    other = ModelAnnouncement(name="someone-else", version="v-1")
    produce(
        kafka_bootstrap,
        announce,
        [
            (b"junk", b"{not json"),
            encode_announcement(other),
            encode_announcement(ModelAnnouncement(name=NAME, version=v2)),
        ],
    )
    wait_for(lambda: info(bg, v2) == 1, 15, "announced version served")
    produce_records(kafka_bootstrap, source, numeric_records(50, start=50))
    wait_for(lambda: consumed(bg, 100), 30, "later records")
    # an old announcement (replayed, or overtaken by a rollback) does not beat LATEST
    produce(
        kafka_bootstrap, announce, [encode_announcement(ModelAnnouncement(name=NAME, version=v1))]
    )
    wait_for(lambda: bg.value("pipeline_announcements_total", {"result": "offered"}) == 2, 15, "2")
    time.sleep(0.5)  # several loop iterations
    assert info(bg, v2) == 1
    bg.stop()

    versions = alert_versions(kafka_bootstrap, s.alert_topic)
    assert {v for rid, v in versions.items() if rid >= "r-000050"} == {v2}
    assert {v for rid, v in versions.items() if rid < "r-000050"} == {v1}
    for result, n in (("offered", 2), ("ignored", 1), ("invalid", 1)):
        assert bg.value("pipeline_announcements_total", {"result": result}) == n


def test_shadow_model_scores_beside_the_live_one_and_never_alerts(
    kafka_bootstrap, make_topic, tmp_path
):
    live = publish(tmp_path, seed=0, alert_share=0.3)
    candidate = publish(tmp_path, seed=1, alert_share=0.1, name="candidate")
    source, shadow_topic = make_topic(partitions=2), make_topic()
    records = numeric_records(300)
    produce_records(kafka_bootstrap, source, records)
    s = settings(
        kafka_bootstrap,
        tmp_path,
        source,
        shadow_model_name="candidate",
        shadow_topic=shadow_topic,
    )
    metrics = PipelineMetrics()
    Worker(s, metrics).run(idle_timeout_s=1.5)

    live_over = offline_scores(records, seed=0) > live.threshold.value
    shadow_over = offline_scores(records, seed=1) > candidate.threshold.value
    alerts = events(kafka_bootstrap, s.alert_topic)
    assert len(alerts) == int(live_over.sum())
    assert {a["model"]["version"] for a in alerts} == {live.version}
    shadow = events(kafka_bootstrap, shadow_topic)
    assert len(shadow) == 300
    assert {e["model"]["name"] for e in shadow} == {"candidate"}
    assert sum(e["is_anomaly"] for e in shadow) == int(shadow_over.sum())

    def value(metric: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(metric, labels) or 0.0

    shadow_v = {"role": "shadow", "version": candidate.version}
    live_v = {"role": "live", "version": live.version}
    assert value("pipeline_model_records_scored_total", **shadow_v) == 300
    assert value("pipeline_model_anomalies_total", **shadow_v) == int(shadow_over.sum())
    assert value("pipeline_model_records_scored_total", **live_v) == 300
    assert value("pipeline_model_anomalies_total", **live_v) == int(live_over.sum())
    assert value("pipeline_shadow_score_count", version=candidate.version) == 300
    assert value("pipeline_shadow_model_info", name="candidate", version=candidate.version) == 1
    assert value("pipeline_shadow_threshold") == pytest.approx(candidate.threshold.value)
    assert value("pipeline_anomalies_total") == int(live_over.sum())  # shadow not counted


def test_shadow_metrics_count_a_batch_once_it_is_committed_not_per_attempt(
    kafka_bootstrap, kafka_admin, make_topic, tmp_path
):
    """The shadow topic refuses every event at first (max.message.bytes 128): the batch fails
    and is retried until the operator fixes the topic. Like the live metrics, the shadow's
    count the records once, when the batch is committed."""
    from kafka.admin import ConfigResource, ConfigResourceType

    publish(tmp_path, seed=0)
    candidate = publish(tmp_path, seed=1, alert_share=0.1, name="candidate")
    source, shadow_topic = make_topic(), make_topic(config={"max.message.bytes": "128"})
    records = numeric_records(100)
    produce_records(kafka_bootstrap, source, records)
    s = settings(
        kafka_bootstrap,
        tmp_path,
        source,
        shadow_model_name="candidate",
        shadow_topic=shadow_topic,
        max_batch_retries=50,
    )
    bg = Background(Worker(s), idle_timeout_s=3)
    wait_for(
        lambda: bg.value("pipeline_batch_failures_total", {"stage": "deliver"}) >= 2,
        60,
        "two failed attempts",
    )
    kafka_admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, shadow_topic, {"max.message.bytes": "1000000"})]
    )
    bg.join(60)
    shadow_v = {"role": "shadow", "version": candidate.version}
    over = int((offline_scores(records, seed=1) > candidate.threshold.value).sum())
    assert bg.value("pipeline_model_records_scored_total", shadow_v) == 100
    assert bg.value("pipeline_model_anomalies_total", shadow_v) == over
    assert bg.value("pipeline_shadow_score_count", {"version": candidate.version}) == 100
    assert bg.value("pipeline_records_scored_total") == 100


def test_fields_of_the_wrong_kind_are_dead_lettered_and_never_scored(
    kafka_bootstrap, make_topic, tmp_path
):
    publish_model(tmp_path, mixed_spec(), name=NAME, threshold=0.0)  # every scored record alerts
    source, scores = make_topic(), make_topic()
    good = {"txn": "ok-1", "amount": 10.5, "channel": "web", "foreign": False, "emb": [0, 1, 2]}
    wrong = {
        "amount-str": {**good, "txn": "b1", "amount": "10.5"},
        "amount-obj": {**good, "txn": "b2", "amount": {"v": 1}},
        "foreign-int": {**good, "txn": "b3", "foreign": 1},
        "foreign-str": {**good, "txn": "b4", "foreign": "yes"},
        "emb-str": {**good, "txn": "b5", "emb": "0,1,2"},
        "emb-elem": {**good, "txn": "b6", "emb": [0, "x", 2]},
        "channel-list": {**good, "txn": "b7", "channel": ["web"]},
    }
    values = [good, *wrong.values(), {**good, "txn": "ok-2", "channel": 3}]
    produce(
        kafka_bootstrap, source, [(str(v["txn"]).encode(), msgspec.json.encode(v)) for v in values]
    )
    s = settings(kafka_bootstrap, tmp_path, source, scores_topic=scores, id_field="txn")
    summary = Worker(s).run(idle_timeout_s=1.5)

    assert (summary.consumed, summary.scored, summary.rejected) == (9, 2, 7)
    assert sorted(e["record_id"] for e in events(kafka_bootstrap, scores)) == ["ok-1", "ok-2"]
    assert sorted(e["record_id"] for e in events(kafka_bootstrap, s.alert_topic)) == [
        "ok-1",
        "ok-2",
    ]
    dead = read_all(kafka_bootstrap, s.dlq_topic)
    assert {parse_dead_letter(d.headers).reason for d in dead} == {"wrong_type"}
    assert sorted(d.value for d in dead) == sorted(msgspec.json.encode(v) for v in wrong.values())


def test_any_json_scalar_is_a_record_id_and_never_costs_the_record(
    kafka_bootstrap, make_topic, tmp_path
):
    """The id field is only carried into the events: a float or a boolean id must not
    dead-letter an otherwise valid record. It is written as its JSON text."""
    publish_model(tmp_path, mixed_spec(), name=NAME, threshold=0.0)
    source, scores = make_topic(), make_topic()
    good = {"amount": 10.5, "channel": "web", "foreign": False, "emb": [0, 1, 2]}
    ids = ["s-1", 42, 7.5, -1e-3, True, False, None]
    produce(
        kafka_bootstrap,
        source,
        [(None, msgspec.json.encode({**good, "txn": i})) for i in ids],
    )
    s = settings(kafka_bootstrap, tmp_path, source, scores_topic=scores, id_field="txn")
    summary = Worker(s).run(idle_timeout_s=1.5)

    assert (summary.consumed, summary.scored, summary.rejected) == (7, 7, 0)
    got = sorted(events(kafka_bootstrap, scores), key=lambda e: e["source"]["offset"])
    assert [e["record_id"] for e in got] == ["s-1", "42", "7.5", "-0.001", "true", "false", None]
    assert read_all(kafka_bootstrap, s.dlq_topic) == []


def test_the_shadow_follows_its_latest_and_may_read_other_columns(
    kafka_bootstrap, make_topic, tmp_path
):
    publish(tmp_path, seed=0)
    wide = publish_model(tmp_path, numeric_spec(5), name="candidate", seed=3)  # needs x4
    source = make_topic()
    s = settings(
        kafka_bootstrap, tmp_path, source, shadow_model_name="candidate", reload_interval_s=0.2
    )
    bg = Background(Worker(s), idle_timeout_s=30)
    produce_records(kafka_bootstrap, source, numeric_records(40))
    wait_for(lambda: consumed(bg, 40), 30, "first records")
    assert bg.value("pipeline_shadow_records_invalid_total", {"reason": "missing_field"}) == 40

    narrow = publish(tmp_path, seed=1, name="candidate")
    wait_for(
        lambda: bg.value(
            "pipeline_shadow_model_info", {"name": "candidate", "version": narrow.version}
        ),
        10,
        "new shadow version",
    )
    produce_records(kafka_bootstrap, source, numeric_records(40, start=40))
    wait_for(lambda: consumed(bg, 80), 30, "later records")
    bg.stop()
    scored = {"role": "shadow", "version": narrow.version}
    assert bg.value("pipeline_model_records_scored_total", scored) == 40
    assert (
        bg.value("pipeline_model_records_scored_total", {"role": "shadow", "version": wide.version})
        == 0
    )
    assert bg.value("pipeline_anomalies_total") == len(events(kafka_bootstrap, s.alert_topic))
    assert bg.value("pipeline_records_invalid_total", {"reason": "missing_field"}) == 0
