"""Hypothesis strategies for hostile record values: random bytes, deep or huge JSON, wrong types,
NaN and infinities, missing fields, odd unicode, invalid UTF-8 and oversized values.

Shared by the codec property tests and the corpus pushed through a real worker."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

from pipeline.contract.features import FeatureSpec

MAX_BYTES = 4096  # the decoder's max_bytes in these tests; "oversized" values exceed it

_ODD_TEXT = st.text(
    alphabet=st.characters(exclude_categories=())
    | st.characters(categories=["Cs"])  # lone surrogates
    | st.sampled_from(["\x00", "\u202e", "\ufeff", "\U0001f600", '"', "\\"]),
    max_size=12,
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _ODD_TEXT
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_ODD_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def to_bytes(obj: Any, ascii_only: bool) -> bytes:
    """JSON text as Python writes it (NaN/Infinity tokens included); lone surrogates become
    escapes (ascii) or invalid UTF-8 bytes (surrogatepass)."""
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def good_value(spec: FeatureSpec, draw: Any) -> dict[str, Any]:
    """A record the spec accepts (finite numbers, right lengths)."""
    out: dict[str, Any] = {}
    finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    for f in spec.features:
        if f.kind == "numeric":
            out[f.name] = draw(finite)
        elif f.kind == "boolean":
            out[f.name] = draw(st.booleans())
        elif f.kind == "categorical":
            out[f.name] = draw(st.sampled_from(["web", "pos", "other", 3]))
        else:
            out[f.name] = draw(st.lists(finite, min_size=f.length, max_size=f.length))
    return out


@st.composite
def mutated_record(draw: Any, spec: FeatureSpec, id_field: str | None = None) -> bytes:
    """A valid record with some fields dropped, retyped, or extra hostile fields added."""
    rec = good_value(spec, draw)
    names = [f.name for f in spec.features]
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        action = draw(st.sampled_from(["drop", "retype", "nan", "null"]))
        if action == "drop":
            rec.pop(name, None)
        elif action == "retype":
            rec[name] = draw(JSON_VALUES)
        elif action == "nan":
            rec[name] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e309]))
        else:
            rec[name] = None
    if id_field is not None and draw(st.booleans()):
        rec[id_field] = draw(st.one_of(_ODD_TEXT, st.integers(), JSON_VALUES))
    for key in draw(st.lists(_ODD_TEXT, max_size=2)):
        rec[key] = draw(JSON_VALUES)
    return to_bytes(rec, ascii_only=draw(st.booleans()))


@st.composite
def deep_json(draw: Any, spec: FeatureSpec) -> bytes:
    """A valid record carrying an ignored field nested ``depth`` levels deep."""
    depth = draw(st.integers(min_value=1, max_value=3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    body = json.dumps(good_value(spec, draw))[:-1]
    return f'{body}, "deep": {opener * depth}1{closer * depth}}}'.encode()


@st.composite
def huge_json(draw: Any, spec: FeatureSpec) -> bytes:
    """A valid record padded to around MAX_BYTES (either side of the limit)."""
    rec = good_value(spec, draw)
    size = draw(st.integers(min_value=MAX_BYTES - 200, max_value=MAX_BYTES + 200))
    rec["padding"] = "x" * max(0, size - len(json.dumps(rec)) - 14)
    return json.dumps(rec).encode()


def hostile_values(spec: FeatureSpec, id_field: str | None = None) -> st.SearchStrategy[bytes]:
    """Any of the hostile kinds, plus plain valid records so batches mix good and bad."""
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=MAX_BYTES + 1, max_size=MAX_BYTES + 64),
        JSON_VALUES.map(lambda v: to_bytes(v, ascii_only=True)),
        mutated_record(spec, id_field),
        deep_json(spec),
        huge_json(spec),
        valid_record(spec),
        bad_utf8_string(spec),
        st.just(b""),
    )


_BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]


@st.composite
def bad_utf8_string(draw: Any, spec: FeatureSpec) -> bytes:
    """A valid record with invalid UTF-8 bytes inside a JSON string (a feature or an extra
    field): not JSON any more, whatever a parser makes of it."""
    rec = good_value(spec, draw)
    names = [f.name for f in spec.features if f.kind == "categorical"] + ["extra", "txn"]
    field = draw(st.sampled_from(names))
    rec[field] = "@@BAD@@"
    raw = draw(st.sampled_from(_BAD_UTF8))
    return json.dumps(rec).encode().replace(b"@@BAD@@", b"ok" + raw)


@st.composite
def valid_record(draw: Any, spec: FeatureSpec) -> bytes:
    return json.dumps(good_value(spec, draw)).encode()


# ------------------------------------------------------------- keys and headers near 1 MiB

MIB = 1 << 20
# sizes around the bounds of pipeline.contract.bounds and the 1 MiB request / message limit
EDGE_SIZES = [0, 1, 2047, 2049, 4095, 4096, 4097, 32_769, 100_000, MIB - 200, MIB, MIB + 1]


@st.composite
def edge_bytes(draw: Any) -> bytes:
    """Bytes of a size at or near a limit: UTF-8 text (multi-byte characters, so a cut can
    fall inside one), or bytes that are not UTF-8 (a key is then hex-encoded, twice as long)."""
    size: int = draw(st.sampled_from(EDGE_SIZES) | st.integers(min_value=0, max_value=64))
    kind: str = draw(st.sampled_from(["ascii", "utf8", "binary"]))
    if kind == "ascii":
        return b"k" * size
    if kind == "utf8":
        return ("\u00e9" * (size // 2 + 1)).encode()[:size].decode("utf-8", "ignore").encode()
    return b"\xff" * size


EDGE_KEYS = st.none() | edge_bytes()
EDGE_HEADERS = st.lists(
    st.tuples(st.sampled_from(["h", "trace", "x" * 300]), edge_bytes()), max_size=2
)
