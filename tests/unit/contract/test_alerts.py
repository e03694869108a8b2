import json
from pathlib import Path

import jsonschema
import msgspec

from pipeline.contract.alerts import (
    AlertEvent,
    alert_json_schema,
    build_event,
    encode_event,
    event_id,
)

SCHEMA_FILE = Path(__file__).parents[3] / "pipeline" / "contract" / "schemas" / "alert.schema.json"


def sample(score: float = 2.0, record=None) -> dict:
    return build_event(
        source=("in", 2, 41, 1_700_000_000_000),
        key=b"\xff\x00",
        record_id="r-1",
        score=score,
        threshold=1.0,
        model=("m", "v1"),
        top_features=[("a", 3.0), ("b", 1.0)],
        total_error=8.0,
        detected_at="2026-01-01T00:00:00.000Z",
        record=record,
    )


def test_committed_schema_file_is_generated_from_the_model():
    assert json.loads(SCHEMA_FILE.read_text()) == alert_json_schema()


def test_built_events_validate_against_the_schema_and_the_model():
    schema = json.loads(SCHEMA_FILE.read_text())
    for event in (sample(), sample(score=0.5), sample(record={"a": 1})):
        decoded = msgspec.json.decode(encode_event(event))
        jsonschema.validate(decoded, schema)
        AlertEvent.model_validate(decoded)
    anomaly = sample()
    assert anomaly["type"] == "anomaly" and anomaly["is_anomaly"] is True
    assert sample(score=0.5)["type"] == "score"
    assert anomaly["key"] == "ff00"  # non-UTF-8 keys are carried as hex
    assert anomaly["top_features"][0] == {"name": "a", "error": 3.0, "share": 0.375}


def test_event_id_is_deterministic_per_source_coordinates_and_timestamp():
    assert event_id("t", 0, 5, 1000) == event_id("t", 0, 5, 1000)
    ids = {
        event_id("t", 0, 5, 1000),
        event_id("t", 1, 5, 1000),
        event_id("t", 0, 6, 1000),
        event_id("t", 0, 5, 1001),  # the same offset in a recreated topic
        event_id("t", 0, 5, None),
    }
    assert len(ids) == 5


def test_fast_event_id_equals_uuid5():
    import uuid

    from pipeline.contract.alerts import EVENT_NAMESPACE

    cases = [("t", 0, 0, 0), ("records", 11, 2**40, 1764000000000), ("é-topic", 3, 7, None)]
    for topic, partition, offset, ts in cases:
        name = f"{topic}/{partition}/{offset}/{'-' if ts is None else ts}"
        expected = str(uuid.uuid5(EVENT_NAMESPACE, name))
        assert event_id(topic, partition, offset, ts) == expected
