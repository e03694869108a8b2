"""A minimal alert consumer: the pattern for your own (Slack, ticketing, a database...).

    python examples/alert_consumer.py --bootstrap 127.0.0.1:9092 --topic anomalies \
        --group my-alert-handler --out alerts.jsonl

The rules that make it safe with an at-least-once (or exactly-once) worker:

1. Its own consumer group, ``isolation_level="read_committed"`` and no auto-commit.
2. Handle a polled batch completely (here: append to a file and fsync), *then* commit.
   A crash in between means the batch is read again after the restart...
3. ...so drop duplicates by ``event_id``: it is derived from the source record's
   topic/partition/offset/timestamp and stays the same when the worker or this consumer
   replays.

Only kafka-python and the standard library; ``python -m pipeline alerts sink`` is the
full-featured version (Parquet, webhooks, filters, cooldown).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer


def handle(batch: list[dict[str, Any]], out: Path) -> None:
    """Your side effect. It must be durable before the offsets are committed."""
    with out.open("a", encoding="utf-8") as fh:
        for event in batch:
            fh.write(json.dumps(event) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def already_handled(out: Path) -> set[str]:
    """Event ids handled before a restart (a real sink would ask its database)."""
    if not out.exists():
        return set()
    ids = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(line)["event_id"])
        except (ValueError, KeyError):
            continue  # a torn last line after a crash
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="anomalies")
    parser.add_argument("--group", default="example-alert-consumer")
    parser.add_argument("--out", type=Path, default=Path("alerts.jsonl"))
    parser.add_argument("--idle-timeout", type=float, default=None, help="seconds, then exit")
    args = parser.parse_args(argv)

    seen = already_handled(args.out)
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    handled = 0
    try:
        idle_ms = 0.0
        while args.idle_timeout is None or idle_ms < args.idle_timeout * 1000:
            polled = consumer.poll(timeout_ms=500)
            records = [r for recs in polled.values() for r in recs]
            idle_ms = 0.0 if records else idle_ms + 500
            batch = []
            for record in records:
                event = json.loads(record.value)
                if event["event_id"] not in seen:
                    batch.append(event)
                    seen.add(event["event_id"])
            if batch:
                handle(batch, args.out)
                handled += len(batch)
            if records:
                consumer.commit()  # only after handle() returned
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)
    print(json.dumps({"handled": handled}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
