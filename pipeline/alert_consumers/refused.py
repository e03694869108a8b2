"""The dead-letter file of ``alerts sink --webhook``: alerts the receiver refused, with why.

A refusal (a 4xx other than 408/429, or a redirect the sink will not follow) gets the same
answer however often it is retried, so waiting on it would block the consumer group forever.
The alert is appended here, fsynced before its offset is committed, and the sink goes on.

Why a file and not a Kafka topic: what lands here is a valid alert a receiver turned down (a
payload it rejects, a wrong URL or token), not a malformed input record, and the fix is on
the receiver's side; then the file is replayed as it is (one POST per line's ``event``), by
hand or by a script, with no consumer group to manage. One JSON object per line::

    {"refused_at": "2026-12-01T05:00:00.000Z", "reason": "refused" | "redirect",
     "status": 422, "detail": "HTTP 422: <first 500 characters of the answer>",
     "endpoint": "https://hooks.example/***", "event": {<the alert event as received>}}

``endpoint`` is the origin only: the URL's path may be the hook's credential.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from pipeline.alert_consumers.sinks import SinkError


class DeadLetterFile:
    """Appends refused alerts as JSON lines; each ``add`` is durable when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("ab")
        except OSError as exc:
            raise SinkError(f"cannot open the dead-letter file {path}: {exc}") from exc

    def add(
        self, event: dict[str, Any], *, reason: str, status: int, detail: str, endpoint: str
    ) -> None:
        """Append one refused alert and fsync, so committing its offset cannot lose it."""
        line = {
            "refused_at": datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "reason": reason,
            "status": status,
            "detail": detail,
            "endpoint": endpoint,
            "event": event,
        }
        try:
            self._fh.write(msgspec.json.encode(line) + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(
                f"cannot append alert {event.get('event_id')} to the dead-letter file "
                f"{self.path}: {exc}"
            ) from exc

    def close(self) -> None:
        self._fh.close()
