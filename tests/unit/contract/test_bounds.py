"""Bounds on what is copied from an input record into its outputs (pipeline.contract.bounds)."""

import json

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract.alerts import alert_json_schema, build_event, encode_event
from pipeline.contract.bounds import (
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS_BYTES,
    MAX_ID_CHARS,
    MAX_KEY_BYTES,
    bounded_headers,
    bounded_key,
    key_text,
)
from pipeline.contract.deadletter import dead_letter_headers, parse_dead_letter
from tests.support.fuzzing import edge_bytes

MIB = 1 << 20
VALIDATOR = jsonschema.Draft202012Validator(alert_json_schema())


def event(key: bytes | None, record_id: str | None) -> dict:
    decoded: dict = json.loads(
        encode_event(
            build_event(
                source=("in", 0, 1, 2),
                key=key,
                record_id=record_id,
                score=2.0,
                threshold=1.0,
                model=("m", "v"),
                top_features=[("a", 1.0)],
                total_error=4.0,
                detected_at="2026-01-01T00:00:00.000Z",
            )
        )
    )
    return decoded


def test_keys_within_the_bound_are_copied_whole():
    assert key_text(b"abc") == ("abc", None)
    assert key_text(b"\xff\x00") == ("ff00", None)
    assert key_text(None) == (None, None)
    assert bounded_key(b"k" * MAX_KEY_BYTES) == b"k" * MAX_KEY_BYTES


def test_a_1_mib_key_is_cut_and_its_size_is_marked():
    e = event(b"\xff" * MIB, "r-1")
    assert e["key"] == "ff" * (MAX_KEY_BYTES // 2)  # hex of the first 2 KiB: 4,096 chars
    assert e["truncated"] == {"key": MIB}
    e = event("é".encode() * (MIB // 2), "r-1")
    assert len(e["key"].encode()) <= MAX_KEY_BYTES and set(e["key"]) == {"é"}
    assert e["truncated"] == {"key": MIB}
    assert bounded_key(b"k" * MIB) == b"k" * MAX_KEY_BYTES
    VALIDATOR.validate(e)


def test_a_long_id_is_cut_and_an_event_without_cuts_has_no_marker():
    e = event(b"k", "i" * (MAX_ID_CHARS + 1))
    assert e["record_id"] == "i" * MAX_ID_CHARS
    assert e["truncated"] == {"record_id": MAX_ID_CHARS + 1}
    VALIDATOR.validate(e)
    assert "truncated" not in event(b"k", "i" * MAX_ID_CHARS)


@given(key=st.none() | edge_bytes(), record_id=st.none() | st.text(max_size=3000))
def test_every_event_is_small_whatever_the_key_and_id(key, record_id):
    e = event(key, record_id)
    VALIDATOR.validate(e)
    assert len(encode_event(e)) < 6 * (MAX_KEY_BYTES + MAX_ID_CHARS) + 2000  # escapes: 6x


def test_dead_letter_headers_are_bounded_and_say_what_the_record_had():
    original = [("small", b"v"), ("big", b"x" * MIB), ("dlq.reason", b"spoof")]
    original += [(f"h{i}", b"y" * MAX_HEADER_VALUE_BYTES) for i in range(10)]
    h = dead_letter_headers(
        reason="bad_json", detail="d", topic="in", partition=0, offset=3, timestamp=None,
        model="m/v", original=original, key_truncated=MIB,
    )  # fmt: skip
    named = dict(h)
    kept = [(k, v) for k, v in h if not k.startswith("dlq.")]
    assert kept[0] == ("small", b"v") and kept[1] == ("big", b"x" * MAX_HEADER_VALUE_BYTES)
    assert sum(len(k) + len(v) for k, v in kept) <= MAX_HEADERS_BYTES
    total = sum(len(k) + len(v) for k, v in original if not k.startswith("dlq."))
    assert named["dlq.headers.truncated"] == str(total).encode()
    assert named["dlq.key.truncated"] == str(MIB).encode()
    assert parse_dead_letter(h).offset == 3


def test_headers_within_the_bounds_are_kept_as_they_are():
    original = [("a", b"1"), ("b", b"\xff" * MAX_HEADER_VALUE_BYTES)]
    assert bounded_headers(original) == (original, None)
    assert bounded_headers([("n", None)]) == ([("n", b"")], None)  # type: ignore[list-item]
