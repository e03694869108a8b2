"""The audit against the real broker: output written by hand with known holes and duplicates,
then the same through the CLI an operator runs."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.alert_consumers.audit import audit
from pipeline.contract.alerts import build_event, encode_event
from pipeline.contract.deadletter import dead_letter_headers
from pipeline.kafka.settings import KafkaSettings
from tests.support.cli import run_module
from tests.support.kafka import produce

pytestmark = pytest.mark.kafka


def score_event(topic: str, partition: int, offset: int) -> bytes:
    event = build_event(
        source=(topic, partition, offset, 0),
        key=None,
        record_id=None,
        score=0.5,
        threshold=1.0,
        model=("m", "v1"),
        top_features=[],
        total_error=0.0,
        detected_at="2026-01-01T00:00:00.000Z",
    )
    return encode_event(event)


def dead_letter(topic: str, partition: int, offset: int, reason: str) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        reason=reason,
        detail="x",
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=None,
        model="m/v1",
    )


@pytest.fixture
def scenario(kafka_bootstrap, make_topic):
    """Input: 2 partitions x 6 records. Output: p0 all scored, offset 2 twice; p1 offsets 0-1
    scored, 2 dead-lettered, 3 lost, 4 scored past the commit; the group committed 6 and 4."""
    source, scores, dlq = make_topic(2), make_topic(), make_topic()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for p in (0, 1):
            for _ in range(6):
                producer.send(source, value=b"{}", partition=p)
        for offset in (0, 1, 2, 2, 3, 4, 5):
            producer.send(scores, score_event(source, 0, offset))
        for offset in (0, 1, 4):
            producer.send(scores, score_event(source, 1, offset))
        producer.send(scores, score_event("another-input", 0, 0))  # not ours: ignored
        producer.send(scores, score_event(source, 1, 99))  # names no input record
        producer.send(dlq, b"bad", headers=dead_letter(source, 1, 2, "bad_json"))
        producer.send(dlq, b"foreign", headers=[("x", b"1")])
        producer.flush(30)
    finally:
        producer.close()
    group = f"g-{source}"
    committer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    try:
        committer.commit(
            {
                TopicPartition(source, 0): OffsetAndMetadata(6, "", -1),
                TopicPartition(source, 1): OffsetAndMetadata(4, "", -1),
            }
        )
    finally:
        committer.close()
    return source, scores, dlq, group


def test_audit_finds_lost_duplicated_and_uncommitted_records(kafka_bootstrap, scenario):
    source, scores, dlq, group = scenario
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    report = audit(kafka, [source], scores, dlq, group_id=group)
    p0, p1 = report.partitions
    assert (p0.records, p0.due, p0.scored, p0.lost, p0.duplicates) == (6, 6, 7, 0, 1)
    assert p0.duplicate_offsets == [2]
    assert (p1.records, p1.due, p1.scored, p1.dead_lettered) == (6, 4, 2, 1)
    assert (p1.lost, p1.lost_offsets, p1.uncommitted_output, p1.pending) == (1, [3], 1, 1)
    assert (report.lost, report.duplicates, report.ok) == (1, 1, False)
    assert report.dlq_reasons == {"bad_json": 1}
    assert (report.foreign_dead_letters, report.unknown_output) == (1, 1)
    assert report.settled

    # without a group every record is due: p1's offset 5 is lost too
    everything = audit(kafka, [source], scores, dlq)
    assert everything.partitions[1].lost_offsets == [3, 5]
    assert everything.due == 12


def test_audit_cli_exit_code_and_json(kafka_bootstrap, scenario, tmp_path):
    source, scores, dlq, group = scenario
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env |= {
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_SCORES_TOPIC": scores,
        "PIPELINE_DLQ_TOPIC": dlq,
        "PIPELINE_GROUP_ID": group,
        "PIPELINE_START_FROM": "earliest",
    }

    def run_audit(*args: str) -> subprocess.CompletedProcess[str]:
        return run_module("pipeline", "audit", *args, env=env, cwd=tmp_path)

    run = run_audit("--json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert (report["lost"], report["duplicates"]) == (1, 1)
    assert report["partitions"][1]["lost_offsets"] == [3]

    table = run_audit()
    assert table.returncode == 1
    assert "lost offsets (first 1): [3]" in table.stdout
    assert "LOST: 1 records" in table.stdout

    del env["PIPELINE_SCORES_TOPIC"]
    missing = run_audit()
    assert missing.returncode == 2
    assert "PIPELINE_SCORES_TOPIC" in missing.stderr


def test_a_clean_run_audits_ok(kafka_bootstrap, make_topic):
    source, scores, dlq = make_topic(), make_topic(), make_topic()
    produce(kafka_bootstrap, source, [(None, b"{}")] * 3)
    produce(kafka_bootstrap, scores, [(None, score_event(source, 0, o)) for o in (0, 2)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(dlq, b"{}", headers=dead_letter(source, 0, 1, "missing_field")).get(30)
    finally:
        producer.close()
    report = audit(KafkaSettings(bootstrap_servers=kafka_bootstrap), [source], scores, dlq)
    assert report.ok and report.lost == report.duplicates == 0
    assert (report.scored, report.dead_lettered) == (2, 1)
