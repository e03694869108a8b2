import pytest

from pipeline.alert_consumers.sinks import SeenIds
from pipeline.alert_consumers.tail import (
    AlertFilter,
    Cooldown,
    decode_event,
    format_pretty,
    parse_since,
)
from pipeline.contract.alerts import build_event, encode_event
from pipeline.contract.exceptions import ConfigError


def event(offset=0, key="k1", score=2.0, model=("m", "v1"), ts=1_700_000_000_000):
    return build_event(
        source=("in", 0, offset, ts),
        key=key.encode() if key else None,
        record_id=f"r-{offset}",
        score=score,
        threshold=1.0,
        model=model,
        top_features=[("temp", 1.5), ("flow", 0.5)],
        total_error=4.0,
        detected_at="2026-01-01T00:00:00.000Z",
    )


def test_parse_since_durations_and_iso_times():
    now = 1_700_000_000_000
    assert parse_since("90s", now) == now - 90_000
    assert parse_since("15m", now) == now - 900_000
    assert parse_since("1.5h", now) == now - 5_400_000
    assert parse_since("2d", now) == now - 2 * 86_400_000
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000_000  # naive = UTC
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday")


def test_filter_by_model_version_score_and_time():
    assert AlertFilter()(event())
    assert not AlertFilter(model="other")(event())
    assert AlertFilter(model="m", version="v1")(event())
    assert not AlertFilter(version="v2")(event())
    assert not AlertFilter(min_score=3.0)(event(score=2.5))
    assert AlertFilter(min_score=2.5)(event(score=2.5))
    assert not AlertFilter(since_ms=1_700_000_000_001)(event())


def test_cooldown_keeps_one_alert_per_key_per_window_on_event_time():
    cd = Cooldown(window_s=60)
    t0 = 1_700_000_000_000
    kept = [
        cd.allow(event(key=k, ts=t0 + dt))
        for k, dt in [("a", 0), ("a", 30_000), ("b", 30_000), ("a", 59_999), ("a", 60_000)]
    ]
    assert kept == [True, False, True, False, True]
    assert cd.suppressed == 2
    no_key = event(key=None)
    no_key["record_id"] = None
    assert cd.allow(no_key) and cd.allow(no_key)  # nothing to group by: never suppressed
    small = Cooldown(window_s=60, max_keys=2)
    for k in "abc":
        small.allow(event(key=k, ts=t0))
    assert small.allow(event(key="a", ts=t0 + 1))  # "a" was forgotten (bounded memory)


def test_decode_and_pretty_format():
    e = event()
    assert decode_event(encode_event(e)) == e
    assert decode_event(b"{oops") is None
    assert decode_event(b'{"hello": 1}') is None
    line = format_pretty(e)
    assert "m/v1" in line and "r-0" in line and "temp 38%" in line and "offset=0" in line


def test_seen_ids_are_bounded():
    seen = SeenIds(capacity=2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    seen.add("c")  # evicts "b", the least recently seen
    assert "a" in seen and "b" not in seen and len(seen) == 2


def test_an_alert_whose_score_is_not_finite_passes_every_min_score_and_prints():
    """The worker sends such an alert with "score": null and reason non_finite_score."""
    e = decode_event(encode_event(event(score=float("nan"))))
    assert e is not None and e["score"] is None and e["reason"] == "non_finite_score"
    assert AlertFilter(min_score=1e300)(e)
    line = format_pretty(e)
    assert "score not finite" in line and "r-0" in line
