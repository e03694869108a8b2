"""What a local Kafka node leaves in its state directory, and reading it back.

Why: the CLI in another process stops or inspects a node through these files alone, so their
shape lives in one place; a file from an incompatible version reads as "nothing there".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.devstack.localkafka_setup import LocalKafkaError, Ports, ScramUser, read_json

STATE_NAME = "broker.json"
LAYOUT_NAME = "layout.json"


@dataclass(frozen=True)
class StartTiming:
    """How long ``start`` took: ``seconds`` from the call to ready, ``jvm_seconds`` from launch."""

    seconds: float
    download_seconds: float
    downloaded: bool
    jvm_seconds: float = 0.0
    adopted: bool = False


@dataclass(frozen=True)
class BrokerRecord:
    """What ``broker.json`` says about a running broker (written after launch)."""

    pid: int
    bootstrap: str
    internal_bootstrap: str
    port: int
    controller_port: int
    internal_port: int | None
    security_protocol: str
    scram_users: list[str]
    version: str
    state_dir: str
    log_path: str
    started_at: float


def validate_heap(heap: str) -> str:
    """Accept only a size like ``512m``: the value is spliced into the JVM's argv."""
    if not re.fullmatch(r"\d+[kKmMgG]?", heap):
        raise LocalKafkaError(f"heap must be a JVM size such as 512m or 1g, not {heap!r}")
    return heap


def read_record(path: Path) -> BrokerRecord | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return BrokerRecord(**data)
    except TypeError:
        return None  # written by an incompatible version: treat as stale


def read_ports(path: Path) -> Ports | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return Ports(int(data["client"]), int(data["controller"]), data.get("internal"))
    except (KeyError, TypeError, ValueError):
        return None


def formatted_users(state_dir: Path, wanted: Sequence[ScramUser]) -> list[str]:
    """SCRAM users a formatted data dir knows; fails when ``wanted`` has one more, since users
    can only be added at format time."""
    layout = read_json(state_dir / LAYOUT_NAME) or {}
    known = sorted(layout.get("scram_users", []))
    missing = sorted({u.name for u in wanted} - set(known))
    if missing:
        raise LocalKafkaError(
            f"{state_dir / 'data'} was formatted without SCRAM users {missing}; users can only be "
            "added at format time, so use a fresh --state-dir"
        )
    return known


def client_kwargs(
    bootstrap: str, users: Sequence[ScramUser], user: str | None, mechanism: str
) -> dict[str, Any]:
    """kafka-python keyword arguments for a broker (credentials of ``user`` if SCRAM is on)."""
    config: dict[str, Any] = {"bootstrap_servers": bootstrap}
    if not users:
        return config
    chosen = next((u for u in users if user in (None, u.name)), None)
    if chosen is None:
        raise LocalKafkaError(f"no SCRAM user {user!r} on this broker")
    return config | {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": chosen.name,
        "sasl_plain_password": chosen.password,
    }
