"""The dead-letter contract: original bytes and key, the reason and source coordinates in headers.

Header names (all values UTF-8): ``dlq.reason``, ``dlq.detail``, ``dlq.source.topic``,
``dlq.source.partition``, ``dlq.source.offset``, ``dlq.source.timestamp``, ``dlq.model``.
The input record's own headers are kept after ours, so a repaired record can be replayed
as it was, within the bounds of ``pipeline.contract.bounds``: each value at most 4 KiB, all of
them at most 32 KiB (``dlq.headers.truncated`` then holds their original total size); the key
at most 4 KiB (``dlq.key.truncated`` holds the original size of a longer one).

Reasons are the decoder's (``pipeline.worker.codec.Reason``) plus ``output_too_large``: the
record was scored but the producer refused its alert or score event as too large.

A value longer than ``MAX_VALUE_BYTES`` is cut to that length and ``dlq.truncated`` holds its
original size: the record with its headers would not fit the producer's 1 MiB request limit
(nor a dead-letter topic with the broker's default ``max.message.bytes``), and a dead letter
that cannot be written would fail its batch on every retry and stop the worker. The whole
record stays in the input topic at ``dlq.source.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.contract.bounds import bounded_headers

PREFIX = "dlq."
OUTPUT_TOO_LARGE = "output_too_large"
MAX_DETAIL = 1024
MAX_VALUE_BYTES = 1_000_000  # leaves ~48 KB of the 1 MiB request for the key and headers


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as a consumer sees it (parsed back from headers)."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    model: str
    truncated: int | None = None  # original size when the value was cut


def dead_letter_value(value: bytes | None) -> tuple[bytes, int | None]:
    """The value to dead-letter and, when it had to be cut, the original size."""
    value = value or b""
    if len(value) <= MAX_VALUE_BYTES:
        return value, None
    return value[:MAX_VALUE_BYTES], len(value)


def dead_letter_headers(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None,
    model: str,
    original: Sequence[tuple[str, bytes]] = (),
    truncated: int | None = None,
    key_truncated: int | None = None,
) -> list[tuple[str, bytes]]:
    """Our headers, then the record's own (bounded); ``truncated``: the value's original
    size when it was cut, ``key_truncated``: the key's."""
    kept, headers_cut = bounded_headers([(k, v) for k, v in original if not k.startswith(PREFIX)])
    ours = [
        ("dlq.reason", reason),
        ("dlq.detail", detail[:MAX_DETAIL]),
        ("dlq.source.topic", topic),
        ("dlq.source.partition", str(partition)),
        ("dlq.source.offset", str(offset)),
        ("dlq.source.timestamp", "" if timestamp is None else str(timestamp)),
        ("dlq.model", model),
    ]
    cuts = [
        ("dlq.truncated", truncated),
        ("dlq.key.truncated", key_truncated),
        ("dlq.headers.truncated", headers_cut),
    ]
    ours += [(name, str(size)) for name, size in cuts if size is not None]
    return [(k, v.encode("utf-8", "replace")) for k, v in ours] + kept


def parse_dead_letter(headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
    """Read our headers back; raises KeyError naming the header if one is missing."""
    h = {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith(PREFIX)}
    ts = h["dlq.source.timestamp"]
    return DeadLetter(
        reason=h["dlq.reason"],
        detail=h["dlq.detail"],
        topic=h["dlq.source.topic"],
        partition=int(h["dlq.source.partition"]),
        offset=int(h["dlq.source.offset"]),
        timestamp=int(ts) if ts else None,
        model=h["dlq.model"],
        truncated=int(h["dlq.truncated"]) if "dlq.truncated" in h else None,
    )
