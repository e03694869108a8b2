import math

import msgspec
import numpy as np
import pytest

from pipeline.worker.codec import BINARY_CONTENT_TYPE, Reason, RecordDecoder
from tests.support.factories import mixed_spec, numeric_spec


def enc(obj) -> bytes:
    return msgspec.json.encode(obj)


def good_mixed(i: int) -> dict:
    return {"amount": 10.0 + i, "channel": "web", "foreign": False, "emb": [1, 2, 3], "txn": i}


def test_json_batch_decodes_in_order_with_ids_and_ignores_extra_fields():
    dec = RecordDecoder(mixed_spec(), id_field="txn")
    values = [enc(good_mixed(i) | {"extra": {"deep": [1]}}) for i in range(4)]
    out = dec.decode(values)
    assert out.accepted == [0, 1, 2, 3]
    assert out.record_ids == ["0", "1", "2", "3"]
    np.testing.assert_allclose(out.cont[:, 0], [10, 11, 12, 13])
    np.testing.assert_allclose(out.cont[0], [10, 0, 1, 2, 3])
    assert out.cat[:, 0].tolist() == [1, 1, 1, 1]
    assert out.rejected == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", Reason.EMPTY),
        (None, Reason.EMPTY),
        (b"{nope", Reason.BAD_JSON),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (enc({"amount": 1.0, "channel": "web", "foreign": True}), Reason.MISSING_FIELD),
        (enc(good_mixed(0) | {"amount": "12"}), Reason.WRONG_TYPE),
        (enc(good_mixed(0) | {"amount": True}), Reason.WRONG_TYPE),
        (enc(good_mixed(0) | {"channel": {"a": 1}}), Reason.WRONG_TYPE),
        (enc(good_mixed(0) | {"emb": [1, 2]}), Reason.WRONG_LENGTH),
        (enc(good_mixed(0) | {"emb": [1, 2, 3, 4]}), Reason.WRONG_LENGTH),
        (
            b'{"amount": 1e999, "channel": "web", "foreign": true, "emb": [1,2,3]}',
            Reason.NON_FINITE,
        ),
        (enc(good_mixed(0) | {"amount": 1e300}), Reason.NON_FINITE),
        (b'{"amount": NaN}', Reason.BAD_JSON),
        (b"x" * 2000, Reason.OVERSIZED),
        # found by fuzzing: both used to escape decode() and stop the worker
        (enc(good_mixed(0) | {"channel": "@"}).replace(b"@", b"\xff"), Reason.BAD_JSON),
    ],
)
def test_bad_records_are_rejected_with_a_reason_and_neighbours_survive(value, reason):
    dec = RecordDecoder(mixed_spec(), id_field="txn", max_bytes=1000)
    out = dec.decode([enc(good_mixed(1)), value, enc(good_mixed(2))])
    assert out.accepted == [0, 2]
    assert [(r.index, r.reason) for r in out.rejected] == [(1, reason)]
    assert out.rejected[0].detail
    np.testing.assert_allclose(out.cont[:, 0], [11, 12])


def test_nesting_deeper_than_the_parser_allows_is_rejected_not_raised():
    """Found by fuzzing: msgspec raises RecursionError past ~1000 levels, even in an ignored
    field, and that used to escape decode() and stop the worker."""
    deep = enc(good_mixed(0))[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    out = RecordDecoder(mixed_spec()).decode([enc(good_mixed(1)), deep])
    assert out.accepted == [0]
    assert [(r.index, r.reason) for r in out.rejected] == [(1, Reason.BAD_JSON)]
    assert "nested deeper" in out.rejected[0].detail


def test_null_is_imputed_or_rejected_by_policy():
    record = enc(good_mixed(0) | {"amount": None, "channel": None})
    out = RecordDecoder(mixed_spec("impute")).decode([record])
    assert out.accepted == [0] and math.isnan(out.cont[0, 0]) and out.cat[0, 0] == 0
    out = RecordDecoder(mixed_spec("reject")).decode([record])
    assert out.rejected[0].reason == Reason.NULL_VALUE


def test_binary_fast_path_matches_json_and_validates_length_and_finiteness():
    spec = numeric_spec(4)
    dec = RecordDecoder(spec)
    rows = np.arange(12, dtype="<f4").reshape(3, 4)
    bad = np.array([1, np.inf, 2, 3], dtype="<f4").tobytes()
    values = [
        rows[0].tobytes(),
        enc({f"x{i}": float(v) for i, v in enumerate(rows[1])}),
        rows[2].tobytes(),
        b"\x00" * 7,
        bad,
    ]
    ctypes = [
        BINARY_CONTENT_TYPE,
        None,
        BINARY_CONTENT_TYPE,
        BINARY_CONTENT_TYPE,
        BINARY_CONTENT_TYPE,
    ]
    out = dec.decode(values, ctypes)
    assert out.accepted == [0, 1, 2]
    np.testing.assert_array_equal(out.cont, rows)
    assert [(r.index, r.reason) for r in out.rejected] == [
        (3, Reason.WRONG_LENGTH),
        (4, Reason.NON_FINITE),
    ]


def test_binary_is_refused_for_specs_with_categoricals():
    out = RecordDecoder(mixed_spec()).decode([b"\x00" * 20], [BINARY_CONTENT_TYPE])
    assert out.rejected[0].reason == Reason.BAD_ENCODING


def test_categorical_accepts_numbers_and_bools_canonically():
    dec = RecordDecoder(mixed_spec())
    out = dec.decode([enc(good_mixed(0) | {"channel": v}) for v in ["pos", 7, True, "nope"]])
    assert out.cat[:, 0].tolist() == [2, 0, 0, 0]


def test_binary_records_take_their_id_from_the_kafka_key():
    rows = np.arange(8, dtype="<f4").reshape(2, 4)
    dec = RecordDecoder(numeric_spec(4), id_field="id")
    out = dec.decode(
        [rows[0].tobytes(), rows[1].tobytes(), enc({"x0": 1, "x1": 2, "x2": 3, "x3": 4, "id": 7})],
        [BINARY_CONTENT_TYPE, BINARY_CONTENT_TYPE, None],
        [b"m-1", b"\xff\x01", b"ignored"],
    )
    assert out.record_ids == ["m-1", "ff01", "7"]
    assert RecordDecoder(numeric_spec(4)).decode(
        [rows[0].tobytes()], [BINARY_CONTENT_TYPE], [b"k"]
    ).record_ids == [None]


def test_entities_come_from_their_field_the_key_or_the_id_field():
    spec = numeric_spec(2)
    values = [
        enc({"x0": 1.0, "x1": 2.0, "id": "a", "machine": "m-1"}),
        enc({"x0": 1.0, "x1": 2.0, "id": "b", "machine": 7}),  # same key as "7"
        enc({"x0": 1.0, "x1": 2.0, "id": "c"}),  # names no machine: the fallback's
        enc({"x0": 1.0, "x1": 2.0, "id": "d", "machine": None}),
        np.array([3.0, 4.0], dtype="<f4").tobytes(),  # binary: its key
    ]
    types = [None] * 4 + [BINARY_CONTENT_TYPE]
    keys = [b"k0", b"k1", b"k2", b"k3", b"k4"]
    by_field = RecordDecoder(spec, id_field="id", entity_field="machine")
    assert by_field.decode(values, types, keys).entities == ["m-1", "7", None, None, "k4"]
    by_key = RecordDecoder(spec, id_field="id", entity_field="machine", entity_from_key=True)
    assert by_key.decode(values, types, keys).entities == ["k0", "k1", "k2", "k3", "k4"]
    same = RecordDecoder(spec, id_field="machine", entity_field="machine")
    assert same.decode(values[:2]).entities == ["m-1", "7"]
    assert same.decode(values[:2]).record_ids == ["m-1", "7"]
    assert RecordDecoder(spec, id_field="id").decode(values).entities is None


def test_an_entity_that_is_not_a_scalar_dead_letters_the_record():
    dec = RecordDecoder(numeric_spec(2), entity_field="machine")
    out = dec.decode([enc({"x0": 1.0, "x1": 2.0, "machine": {"id": 3}})])
    assert out.accepted == [] and out.rejected[0].reason == Reason.WRONG_TYPE
    assert "machine" in out.rejected[0].detail
