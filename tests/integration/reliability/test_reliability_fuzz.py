"""A hypothesis-generated corpus of hostile records through a real worker and broker: the worker
never stops, and every record is scored or dead-lettered (with its reason and original bytes)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from kafka import KafkaProducer

from pipeline.alert_consumers.audit import audit
from pipeline.contract.bounds import (
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS_BYTES,
    MAX_ID_CHARS,
    MAX_KEY_BYTES,
    key_text,
)
from pipeline.contract.deadletter import MAX_VALUE_BYTES, parse_dead_letter
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.codec import BINARY_CONTENT_TYPE, Reason
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from tests.support.factories import mixed_spec, publish_model
from tests.support.faults import (
    SCALED_TIMEOUT,
    OffsetProbe,
    account,
    record_result,
    scaled,
    worker_env,
)
from tests.support.fuzzing import (
    EDGE_HEADERS,
    EDGE_KEYS,
    EDGE_SIZES,
    MAX_BYTES,
    MIB,
    hostile_values,
)
from tests.support.kafka import read_all
from tests.support.workers import (
    NAME,
    events,
    numeric_records,
    produce_records,
    publish,
    wait_for,
)
from tests.support.workers import settings as worker_settings

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("torch_one_thread"), SCALED_TIMEOUT]
REASONS = {r.value for r in Reason}
SPEC = mixed_spec()
_HEADERS = st.lists(
    st.tuples(st.text(max_size=8), st.binary(max_size=8))
    | st.just(("content-type", BINARY_CONTENT_TYPE.encode())),
    max_size=2,
)
_RECORD = st.tuples(st.none() | st.binary(max_size=12), hostile_values(SPEC, "txn"), _HEADERS) | (
    st.tuples(st.binary(min_size=1, max_size=4), st.none(), _HEADERS)  # tombstones
)


def generate(strategy: st.SearchStrategy[Any], n: int, seed: int) -> list[Any]:
    """``n`` distinct examples of ``strategy`` (reproducible through ``seed``)."""
    out: list[Any] = []

    @hypothesis_seed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None)
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


def test_a_hostile_corpus_is_scored_or_dead_lettered_record_by_record(
    kafka_bootstrap, make_topic, tmp_path
):
    seed = int(os.environ.get("FUZZ_SEED", "20261124"))
    corpus = generate(_RECORD, scaled(400), seed)
    publish_model(tmp_path, SPEC, name=NAME, threshold=0.5)
    source, scores = make_topic(1), make_topic(1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for key, value, headers in corpus:
            producer.send(source, key=key, value=value, headers=headers)
        producer.flush(60)
    finally:
        producer.close()
    s = worker_settings(
        kafka_bootstrap,
        tmp_path,
        source,
        scores_topic=scores,
        id_field="txn",
        max_record_bytes=MAX_BYTES,
        batch={"max_size": 32},
        max_batch_retries=0,  # a record that fails its batch must show, not be retried away
    )
    metrics = PipelineMetrics()
    summary = Worker(s, metrics).run(idle_timeout_s=2)  # raises if the worker gives up
    assert summary.consumed == len(corpus)

    report = audit(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), [source], scores, s.dlq_topic,
        group_id=s.group_id,
    )  # fmt: skip
    assert (report.records, report.due, report.lost, report.duplicates) == (
        len(corpus), len(corpus), 0, 0,
    )  # fmt: skip
    assert report.scored + report.dead_lettered == len(corpus)
    assert report.dead_letters_without_reason == report.foreign_dead_letters == 0
    assert set(report.dlq_reasons) <= REASONS
    assert report.scored > 0 and report.dead_lettered > 0
    record_result(
        "hostile input (hypothesis corpus)", sent=len(corpus),
        faults=f"random bytes, nesting, wrong types, NaN/inf, odd unicode, oversized (seed {seed})",
        lost=report.lost, duplicates=report.duplicates, scored=report.scored,
        dead_lettered=report.dead_lettered, reasons=dict(report.dlq_reasons),
    )  # fmt: skip
    for dead in read_all(kafka_bootstrap, s.dlq_topic):
        letter = parse_dead_letter(dead.headers)
        key, value, headers = corpus[letter.offset]
        assert (dead.key, dead.value) == (key, value or b"")
        assert letter.detail
        assert [h for h in dead.headers if not h[0].startswith("dlq.")] == [
            (k, v) for k, v in headers if not k.startswith("dlq.")
        ]


def test_records_too_big_for_the_dead_letter_topic_are_dead_lettered_truncated(
    kafka_bootstrap, make_topic, tmp_path
):
    """A malformed record just under the broker's default 1 MiB limit, and an oversized one
    from an input topic that allows 3 MB: neither fits in a dead letter with its headers."""
    publish_model(tmp_path, SPEC, name=NAME, threshold=0.5)
    source = make_topic(1, config={"max.message.bytes": str(3 << 20)})
    near_limit = b"{" + b"x" * 1_048_399  # bad JSON, fits a default topic as a record
    big = b'{"amount": 1.0, "pad": "' + b"y" * 1_500_000 + b'"}'  # valid JSON, oversized
    good = b'{"amount": 1.0, "channel": "web", "foreign": true, "emb": [1, 2, 3], "txn": "ok"}'
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=3 << 20
    )
    try:
        for value in (good, near_limit, big, good):
            producer.send(source, key=b"k", value=value).get(60)
    finally:
        producer.close()
    s = worker_settings(
        kafka_bootstrap, tmp_path, source, id_field="txn", max_batch_retries=0,
        batch={"max_size": 2},
    )  # fmt: skip
    summary = Worker(s).run(idle_timeout_s=2)
    assert (summary.consumed, summary.scored, summary.rejected) == (4, 2, 2)
    dead = {parse_dead_letter(d.headers).offset: d for d in read_all(kafka_bootstrap, s.dlq_topic)}
    assert sorted(dead) == [1, 2]
    for offset, original, reason in ((1, near_limit, "bad_json"), (2, big, "oversized")):
        letter, headers = dead[offset], dict(dead[offset].headers)
        assert parse_dead_letter(letter.headers).reason == reason
        assert headers["dlq.truncated"] == str(len(original)).encode()
        assert original.startswith(letter.value) and len(letter.value) == 1_000_000


@st.composite
def _edge_value(draw: Any) -> bytes:
    """A record of the worker tests' numeric spec whose id has an edge size, or a
    malformed one (dead-lettered with the record's key and headers)."""
    kind = draw(st.sampled_from(["valid", "valid_big_id", "bad_json"]))
    if kind == "bad_json":
        return b"{not json"
    size = draw(st.sampled_from(EDGE_SIZES)) if kind == "valid_big_id" else 8
    body = {"x0": 0.5, "x1": 1.0, "x2": 2.0, "x3": 30.0, "id": "i" * max(1, size - 300)}
    return json.dumps(body).encode()


_EDGE_RECORD = st.tuples(EDGE_KEYS, _edge_value(), EDGE_HEADERS)


def test_keys_headers_and_ids_up_to_and_over_1_mib_never_block_a_partition(
    kafka_bootstrap, make_topic, tmp_path, workers
):
    """Keys, header values and id fields of sizes around every bound and past the broker's
    1 MiB message limit (the input topic takes 4 MiB): a real worker process scores or
    dead-letters each record and never stops; what it had to cut says so."""
    seed = int(os.environ.get("FUZZ_SEED", "20261201"))
    corpus = _explicit_edges() + generate(_EDGE_RECORD, scaled(30), seed)
    publish(tmp_path)
    source = make_topic(2, config={"max.message.bytes": str(4 << 20)})
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 << 20
    )
    try:
        for key, value, headers in corpus:
            producer.send(source, key=key, value=value, headers=headers).get(60)
    finally:
        producer.close()
    group = f"g-{source}"
    env = worker_env(
        kafka_bootstrap, tmp_path, source, group=group,
        PIPELINE_MAX_BATCH_RETRIES="0",  # a record that fails its batch stops the worker
        PIPELINE_BATCH__MAX_SIZE="8",
    )  # fmt: skip
    config = {"bootstrap_servers": kafka_bootstrap}
    probe = OffsetProbe(config, group)
    try:
        worker = workers.start(env, "edges")
        wait_for(
            lambda: probe.all_committed(source) or worker.proc.poll() is not None,
            240,
            "every record committed",
        )
        assert worker.proc.poll() is None, f"the worker stopped:\n{worker.tail()}"
        assert worker.stop() == 0, worker.tail()
    finally:
        probe.close()
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, group, group=group)
    assert (report.records, report.due, report.lost, report.duplicates) == (
        len(corpus), len(corpus), 0, 0,
    ), report.as_dict()  # fmt: skip
    assert report.scored + report.dead_lettered == len(corpus)
    over = {
        "keys_from_1_mib": sum(k is not None and len(k) >= MIB - 200 for k, _, _ in corpus),
        "headers_from_1_mib": sum(any(len(v) >= MIB - 200 for _, v in h) for _, _, h in corpus),
        "ids_from_1_mib": sum(len(v) >= MIB - 200 for _, v, _ in corpus),
    }
    record_result(
        "keys, headers and ids up to and over 1 MiB", sent=len(corpus), **over,
        faults=f"edge sizes {EDGE_SIZES} (seed {seed})", lost=report.lost,
        duplicates=report.duplicates, scored=report.scored,
        dead_lettered=report.dead_lettered, reasons=dict(report.dlq_reasons),
    )  # fmt: skip
    _check_marked_cuts(kafka_bootstrap, source, group, corpus)


def _explicit_edges() -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Keys, header values and ids at and just over 1 MiB, text and binary, on valid and
    malformed records (hypothesis alone rarely draws the largest sizes)."""
    valid = json.dumps({"x0": 0.5, "x1": 1.0, "x2": 2.0, "x3": 30.0, "id": "e"}).encode()
    out: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for size in (MIB - 200, MIB, MIB + 1):
        for fill in (b"k", b"\xff"):
            for value in (valid, b"{not json"):
                out.append((fill * size, value, []))
                out.append((b"k", value, [("h", fill * size)]))
        body = {"x0": 0.5, "x1": 1.0, "x2": 2.0, "x3": 30.0, "id": "i" * (size - 100)}
        out.append((b"k", json.dumps(body).encode(), []))
    return out


def _check_marked_cuts(bootstrap: str, source: str, prefix: str, corpus: list[Any]) -> None:
    """Every output that carries less than its record says how much it left out."""
    assert corpus
    inputs = {(r.partition, r.offset): r for r in read_all(bootstrap, source)}
    for rec in read_all(bootstrap, f"{prefix}-scores"):
        event = json.loads(rec.value)
        original = inputs[(event["source"]["partition"], event["source"]["offset"])]
        cut = event.get("truncated") or {}
        if original.key is not None and len(original.key) > MAX_KEY_BYTES // 2:
            text, size = key_text(original.key)
            assert (event["key"], cut.get("key")) == (text, size)
        assert event["key"] is None or len(event["key"]) <= MAX_KEY_BYTES
        record_id = json.loads(original.value)["id"]
        if len(record_id) > MAX_ID_CHARS:
            assert event["record_id"] == record_id[:MAX_ID_CHARS]
            assert cut["record_id"] == len(record_id)
        else:
            assert event["record_id"] == record_id and "record_id" not in cut
        assert rec.key == (None if original.key is None else original.key[:MAX_KEY_BYTES])
    for dead in read_all(bootstrap, f"{prefix}-dlq"):
        letter = parse_dead_letter(dead.headers)
        original = inputs[(letter.partition, letter.offset)]
        headers = dict(dead.headers)
        if original.key is not None and len(original.key) > MAX_KEY_BYTES:
            assert headers["dlq.key.truncated"] == str(len(original.key)).encode()
            assert dead.key == original.key[:MAX_KEY_BYTES]
        else:
            assert dead.key == original.key
        size = sum(len(k.encode()) + len(v or b"") for k, v in original.headers)
        cut = size > MAX_HEADERS_BYTES or any(
            len(v or b"") > MAX_HEADER_VALUE_BYTES or len(k) > 256 for k, v in original.headers
        )
        assert headers.get("dlq.headers.truncated") == (str(size).encode() if cut else None)
        assert len(dead.value) <= MAX_VALUE_BYTES


def test_a_record_whose_alert_is_too_large_to_send_is_dead_lettered_as_output_too_large(
    kafka_bootstrap, make_topic, tmp_path
):
    """include_record copies records up to 900 kB, but JSON written back can be longer than
    it was read (``1e5`` becomes ``100000.0``): a 890 kB record makes a ~1.7 MB alert. The
    producer refuses it; the record is dead-lettered (value, coordinates, reason), its
    neighbours are scored, and the batch does not fail."""
    publish(tmp_path)
    source, scores = make_topic(1), make_topic(1)
    padding = ",".join(["1e5"] * 222_000)
    wide = f'{{"id": "wide", "x0": 1e4, "x1": 1, "x2": 2, "x3": 3, "pad": [{padding}]}}'.encode()
    assert 880_000 < len(wide) < 900_000
    normal = [
        json.dumps({"id": f"n{i}", "x0": 0.0, "x1": 1.0, "x2": 2.0, "x3": 3.0}).encode()
        for i in range(2)
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for value in (normal[0], wide, normal[1]):
            producer.send(source, key=b"k", value=value).get(60)
    finally:
        producer.close()
    s = worker_settings(
        kafka_bootstrap, tmp_path, source, scores_topic=scores, include_record=True,
        max_batch_retries=0, batch={"max_size": 8},
    )  # fmt: skip
    metrics = PipelineMetrics()
    summary = Worker(s, metrics).run(idle_timeout_s=2)
    assert summary.consumed == 3
    dead = read_all(kafka_bootstrap, s.dlq_topic)
    assert len(dead) == 1
    letter = parse_dead_letter(dead[0].headers)
    assert (letter.reason, letter.offset, dead[0].value) == ("output_too_large", 1, wide)
    assert s.alert_topic in letter.detail and "too large" in letter.detail
    assert sorted(json.loads(r.value)["record_id"] for r in read_all(kafka_bootstrap, scores)) == [
        "n0", "n1",
    ]  # fmt: skip
    sample = metrics.registry.get_sample_value
    assert sample("pipeline_records_invalid_total", {"reason": "output_too_large"}) == 1
    assert sample("pipeline_batch_failures_total", {"stage": "deliver"}) is None


def test_records_whose_scores_overflow_alert_as_not_finite_none_pass_as_normal(
    kafka_bootstrap, make_topic, tmp_path
):
    """Valid records with values near float32's limit (the codec accepts up to ~3.4e38) make
    the model's reconstruction error overflow: each one alerts with reason non_finite_score
    through a real worker and broker, none is committed as normal, nothing is lost."""
    publish(tmp_path, alert_share=0.0001)  # ordinary records almost never alert
    source = make_topic(2)
    normal = numeric_records(60)
    extreme = [
        {"id": f"x-{i:03d}", "x0": sign * 3.4e38, "x1": 1.0, "x2": 2.0, "x3": 3.0}
        for i, sign in enumerate([1.0, -1.0] * 10)
    ]
    produce_records(kafka_bootstrap, source, normal + extreme)
    s = worker_settings(kafka_bootstrap, tmp_path, source, scores_topic=f"{source}-scores")
    summary = Worker(s, PipelineMetrics()).run(idle_timeout_s=3)
    assert summary.consumed == len(normal) + len(extreme)
    alerts = {e["record_id"]: e for e in events(kafka_bootstrap, s.alert_topic)}
    for record in extreme:
        alert = alerts.get(record["id"])
        assert alert is not None, f"{record['id']} passed as normal"
        assert (alert["reason"], alert["score"]) == ("non_finite_score", None), alert
    assert all(e["reason"] == "over_threshold" for k, e in alerts.items() if k.startswith("r-"))
    report = account(KafkaSettings(bootstrap_servers=kafka_bootstrap), source, source)
    assert (report.records, report.lost) == (len(normal) + len(extreme), 0), report.as_dict()
