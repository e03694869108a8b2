"""Property tests of the decoder and the batch processor on hostile input: whatever the bytes,
nothing raises, every record is either accepted or rejected with a reason, accepted rows hold
no infinity, and a record decodes the same alone as inside any batch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.deadletter import parse_dead_letter
from pipeline.worker.codec import BINARY_CONTENT_TYPE, Reason, RecordDecoder
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.processing import BatchProcessor, Topics
from pipeline.worker.serving import ModelHandle, open_model
from tests.support.factories import mixed_spec, numeric_spec, publish_model
from tests.support.fuzzing import MAX_BYTES, deep_json, hostile_values, mutated_record

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPECS = {"mixed": mixed_spec(), "mixed-reject": mixed_spec("reject"), "numeric": numeric_spec(4)}
REASONS = {r.value for r in Reason}


def check_partition(values: list[bytes], decoder: RecordDecoder, ctypes: Any = None) -> None:
    out = decoder.decode(values, ctypes)
    rejected = [r.index for r in out.rejected]
    assert sorted(out.accepted + rejected) == list(range(len(values)))
    assert not set(out.accepted) & set(rejected)
    for r in out.rejected:
        assert r.reason.value in REASONS and r.detail.strip()
    assert out.cont.shape == (len(out.accepted), decoder.spec.n_continuous)
    assert not np.isinf(out.cont).any()
    if decoder.spec.missing == "reject":
        assert not np.isnan(out.cont).any()
    assert len(out.record_ids) == len(out.accepted)
    for rid in out.record_ids:
        assert rid is None or isinstance(rid, str)
        if rid is not None:
            rid.encode("utf-8")  # alerts carry it as JSON text


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@FUZZ
@given(data=st.data())
def test_any_batch_of_hostile_values_is_partitioned_into_accepted_and_rejected(spec_name, data):
    spec = SPECS[spec_name]
    values = data.draw(st.lists(hostile_values(spec, "txn"), min_size=1, max_size=12))
    check_partition(values, RecordDecoder(spec, id_field="txn", max_bytes=MAX_BYTES))


@FUZZ
@given(values=st.lists(st.binary(max_size=40), min_size=1, max_size=8), data=st.data())
def test_binary_fast_path_never_raises(values, data):
    ctypes = data.draw(
        st.lists(
            st.sampled_from([BINARY_CONTENT_TYPE, None, "text/plain"]),
            min_size=len(values),
            max_size=len(values),
        )
    )
    for spec in (numeric_spec(4), mixed_spec()):
        check_partition(values, RecordDecoder(spec, max_bytes=MAX_BYTES), ctypes)


@FUZZ
@given(data=st.data())
def test_a_record_decodes_the_same_alone_and_in_a_batch(data):
    spec = mixed_spec()
    decoder = RecordDecoder(spec, id_field="txn", max_bytes=MAX_BYTES)
    values = data.draw(st.lists(hostile_values(spec, "txn"), min_size=2, max_size=8))
    batch = decoder.decode(values)
    reasons = {r.index: r.reason for r in batch.rejected}
    for i, value in enumerate(values):
        alone = decoder.decode([value])
        if i in reasons:
            assert [r.reason for r in alone.rejected] == [reasons[i]]
        else:
            row = batch.accepted.index(i)
            np.testing.assert_array_equal(alone.cont[0], batch.cont[row])
            np.testing.assert_array_equal(alone.cat[0], batch.cat[row])
            assert alone.record_ids == [batch.record_ids[row]]


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None)
@given(value=deep_json(numeric_spec(4)))
def test_deeply_nested_ignored_fields_never_crash_the_decoder(value):
    out = RecordDecoder(numeric_spec(4), max_bytes=1 << 20).decode([value, value])
    assert len(out.accepted) + len(out.rejected) == 2


@FUZZ
@given(value=mutated_record(mixed_spec(), "txn"))
def test_mutated_records_keep_their_neighbours(value):
    good = b'{"amount": 1.0, "channel": "web", "foreign": true, "emb": [1, 2, 3], "txn": "n"}'
    out = RecordDecoder(mixed_spec(), id_field="txn", max_bytes=MAX_BYTES).decode(
        [good, value, good]
    )
    assert {0, 2} <= set(out.accepted)


# ----------------------------------------------------------------- whole batch processing


@dataclass
class ListSink:
    """Collects what the processor sends (the processor's logic alone, no Kafka here)."""

    sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        assert isinstance(value, bytes)
        self.sent.append((topic, value, key, list(headers or [])))


@dataclass
class Rec:
    value: bytes | None
    offset: int
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "in"
    partition: int = 0
    timestamp: int | None = 1


@pytest.fixture(scope="module")
def handle(tmp_path_factory) -> ModelHandle:
    store = tmp_path_factory.mktemp("fuzz-store")
    publish_model(store, mixed_spec(), name="m", threshold=0.5)
    torch.set_num_threads(1)
    return open_model(
        str(store),
        "m",
        None,
        torch.device("cpu"),
        id_field="txn",
        top_k=3,
        max_record_bytes=MAX_BYTES,
    )


@FUZZ
@given(data=st.data())
def test_every_record_leaves_exactly_one_score_event_or_dead_letter(handle, data):
    spec = handle.spec
    values = data.draw(st.lists(hostile_values(spec, "txn"), min_size=1, max_size=10))
    keys = data.draw(
        st.lists(st.none() | st.binary(max_size=8), min_size=len(values), max_size=len(values))
    )
    records = [
        Rec(v, i, key=k, headers=[("h", b"\xff\x00")])
        for i, (v, k) in enumerate(zip(values, keys, strict=True))
    ]
    sink = ListSink()
    processor = BatchProcessor(
        Topics("alerts", "dlq", "scores"), PipelineMetrics(), include_record=True
    )
    result = processor.process(records, handle, sink)
    assert result.scored + result.rejected == len(records)
    per_offset: dict[int, int] = {}
    for topic, value, _, headers in sink.sent:
        if topic == "scores":
            event = msgspec.json.decode(value)
            per_offset[event["source"]["offset"]] = per_offset.get(event["source"]["offset"], 0) + 1
        elif topic == "dlq":
            dead = parse_dead_letter(headers)
            assert dead.reason in REASONS and dead.detail
            assert value == (records[dead.offset].value or b"")
            per_offset[dead.offset] = per_offset.get(dead.offset, 0) + 1
    assert per_offset == dict.fromkeys(range(len(records)), 1)
