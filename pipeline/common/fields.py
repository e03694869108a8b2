"""Setting value types every settings class shares: topic names, store names, hosts, regexes.

Each is checked when settings load, so a bad value fails at start naming its env var instead
of failing at the first batch. Imported by the worker, Kafka and trainer settings alike.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$"
)


def _topic(name: str) -> str:
    """Kafka's own rule; a bad name would otherwise fail only at the first batch."""
    if not _TOPIC_RE.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")
    return name


def _topics(value: str) -> str:
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise ValueError("no topic named")
    for name in names:
        _topic(name)
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


def _store_name(value: str) -> str:
    """A model name or version is a directory in the store: no path tricks."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} must be 1-128 of A-Z a-z 0-9 . _ - (not starting with . - _)")
    return value


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


def _bootstrap(value: str) -> str:
    for server in (s.strip() for s in value.split(",")):
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{server!r} is not host:port")
        _host(host.strip("[]"))
    return value


Topic = Annotated[str, AfterValidator(_topic)]
Topics = Annotated[str, AfterValidator(_topics)]
StoreName = Annotated[str, AfterValidator(_store_name)]
Host = Annotated[str, AfterValidator(_host)]
Regex = Annotated[str, AfterValidator(_regex)]
Bootstrap = Annotated[str, AfterValidator(_bootstrap)]
