from typing import Any

from pipeline.contract.deadletter import (
    MAX_VALUE_BYTES,
    dead_letter_headers,
    dead_letter_value,
    parse_dead_letter,
)


def headers(**kw):
    base: dict[str, Any] = {
        "reason": "bad_json",
        "detail": "d" * 5000,
        "topic": "in",
        "partition": 2,
        "offset": 7,
        "timestamp": None,
        "model": "m/v1",
        "original": [("trace", b"\xff"), ("dlq.reason", b"spoofed")],
    }
    return dead_letter_headers(**(base | kw))


def test_headers_round_trip_and_the_record_own_headers_follow_ours():
    h = headers()
    letter = parse_dead_letter(h)
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == (
        "bad_json",
        "in",
        2,
        7,
    )
    assert letter.timestamp is None and letter.truncated is None
    assert len(letter.detail) == 1024
    assert h[-1] == ("trace", b"\xff")  # a record's own dlq.* header cannot spoof ours
    assert [v for k, v in h if k == "dlq.reason"] == [b"bad_json"]


def test_values_over_the_limit_are_cut_and_say_their_size():
    assert dead_letter_value(None) == (b"", None)
    small = b"x" * MAX_VALUE_BYTES
    assert dead_letter_value(small) == (small, None)
    value, size = dead_letter_value(small + b"yz")
    assert (value, size) == (small, MAX_VALUE_BYTES + 2)
    assert parse_dead_letter(headers(truncated=size)).truncated == MAX_VALUE_BYTES + 2
