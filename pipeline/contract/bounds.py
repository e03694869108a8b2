"""Limits on what the worker copies from an input record into its outputs.

An alert, score event or dead letter carries parts of its input record: the key (in the JSON
and as the output's Kafka key), the id field, the record itself (``include_record``), the
record's headers (dead letters). Copied whole, one record with a 1 MiB key (twice that once
hex-encoded) makes an output over the producer's and the broker's 1 MiB limit; the send fails,
the batch is retried, the worker stops, and its restart meets the same record again: one record
blocks its partition for good. So every copied field has a bound, and what was cut says so
(``truncated`` in events, ``dlq.*.truncated`` headers in dead letters) with the original size.

With these bounds an event is at most a few tens of kB plus the record copy (at most
``MAX_RECORD_COPY_BYTES`` of input), and a dead letter at most its value cut to
``deadletter.MAX_VALUE_BYTES`` plus ~45 kB: both fit a 1 MiB request. Whatever still does not
fit (e.g. a topic with a smaller ``max.message.bytes``) is dead-lettered as
``output_too_large`` by the worker.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_KEY_BYTES = 4096  # a key's bytes copied (output Kafka key; JSON text at most this long)
MAX_ID_CHARS = 1024  # characters of the id field copied into events
MAX_RECORD_COPY_BYTES = 900_000  # include_record: larger records are not copied into alerts
MAX_HEADER_VALUE_BYTES = 4096  # bytes of each input header value kept on a dead letter
MAX_HEADERS_BYTES = 32_768  # all kept input headers of a dead letter, names and values

Headers = list[tuple[str, bytes]]


def bounded_key(key: bytes | None) -> bytes | None:
    """The Kafka key of an output: the input's key, cut to MAX_KEY_BYTES (a cut is the same
    for the same key, so outputs of one key still share a partition)."""
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return key[:MAX_KEY_BYTES]


def key_text(key: bytes | None) -> tuple[str | None, int | None]:
    """(the key as text, its original size in bytes when the text had to be cut).

    UTF-8 when the whole key is text, else hex; at most MAX_KEY_BYTES characters either way
    (hex of the first half as many bytes, since hex doubles the size)."""
    if key is None:
        return None, None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        half = MAX_KEY_BYTES // 2
        return key[:half].hex(), (len(key) if len(key) > half else None)
    if len(key) <= MAX_KEY_BYTES:
        return text, None
    return key[:MAX_KEY_BYTES].decode("utf-8", "ignore"), len(key)  # "ignore": a cut character


def bounded_text(text: str | None, limit: int = MAX_ID_CHARS) -> tuple[str | None, int | None]:
    """(text cut to ``limit`` characters, its original length when it was cut)."""
    if text is None or len(text) <= limit:
        return text, None
    return text[:limit], len(text)


def bounded_headers(headers: Sequence[tuple[str, bytes]]) -> tuple[Headers, int | None]:
    """(input headers to keep on a dead letter, their original total size when some were cut
    or dropped): each value cut to MAX_HEADER_VALUE_BYTES, names to 256 bytes, and headers
    past MAX_HEADERS_BYTES in all left out."""
    kept: Headers = []
    used = original = 0
    cut = False
    for name, value in headers:
        raw = value or b""
        original += len(name.encode("utf-8", "replace")) + len(raw)
        short_name = name.encode("utf-8", "replace")[:256].decode("utf-8", "ignore")
        short = raw[:MAX_HEADER_VALUE_BYTES]
        size = len(short_name.encode("utf-8")) + len(short)
        if used + size > MAX_HEADERS_BYTES:
            cut = True
            continue
        cut = cut or short_name != name or len(short) < len(raw)
        kept.append((short_name, short))
        used += size
    return kept, (original if cut else None)
