"""Default transactional ids (exactly-once): unique among live workers, stable across restarts.

A crashed worker can leave a transaction open; the broker aborts it when a producer with the
same transactional id calls ``init_transactions``, or else only after the transaction timeout
(60 s), and until then every ``read_committed`` reader of those partitions is held back. An id
derived from the process id changes with every restart, so the restarted worker cannot end
its predecessor's transaction.

The default id is therefore ``<group>-<hostname>-<slot>``: the worker holds an exclusive
``flock`` on ``<tmp>/anomaly-pipeline/txn-<group>-<slot>.lock`` for as long as it runs, taking
the lowest slot no live worker on this host holds. The kernel drops the lock when the process
dies, however it dies, so a restarted worker gets its predecessor's slot and id back, while two
workers running side by side on one host get different ones. In Kubernetes the hostname is the
pod name, stable across container restarts; a pod replaced under a new name still waits for the
timeout, which is why a StatefulSet pod name in ``PIPELINE_TRANSACTIONAL_ID`` remains the best.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_SLOTS = 1024


@dataclass
class TransactionalIdSlot:
    """An id held through an open, locked file; ``release`` (or process exit) frees it."""

    transactional_id: str
    slot: int
    path: Path | None
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim_transactional_id(group_id: str, lock_dir: Path | None = None) -> TransactionalIdSlot:
    """The lowest free slot's id for ``group_id`` on this host; if the lock directory cannot be
    used (read-only filesystem), a pid-based id, unique but not stable, with a warning."""
    host = socket.gethostname()
    directory = lock_dir or Path(tempfile.gettempdir()) / "anomaly-pipeline"
    stem = _file_stem(group_id)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            path = directory / f"txn-{stem}-{slot}.lock"
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return TransactionalIdSlot(f"{group_id}-{host}-{slot}", slot, path, fd)
    except OSError as exc:
        fallback = f"{group_id}-{host}-pid{os.getpid()}"
        log.warning(
            "cannot lock a transactional id slot; using one that changes with every restart"
            " (set PIPELINE_TRANSACTIONAL_ID)",
            extra={"dir": str(directory), "error": repr(exc), "transactional_id": fallback},
        )
        return TransactionalIdSlot(fallback, -1, None, None)
    raise RuntimeError(f"more than {MAX_SLOTS} workers of group {group_id} on this host")


def _file_stem(group_id: str) -> str:
    """A file-name-safe, collision-free stand-in for any group id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", group_id)[:80]
    return f"{safe}-{hashlib.sha256(group_id.encode()).hexdigest()[:8]}"


class TransactionalIds:
    """The worker's transactional id (exactly-once only): the configured one, or a claimed
    slot held until ``release`` (after the producer is closed)."""

    def __init__(self, delivery: str, group_id: str, configured: str | None) -> None:
        self.delivery = delivery
        self.group_id = group_id
        self.configured = configured
        self._slot: TransactionalIdSlot | None = None

    def current(self) -> str | None:
        if self.delivery != "exactly-once":
            return None
        if self.configured:
            return self.configured
        if self._slot is None:
            self._slot = claim_transactional_id(self.group_id)
            log.info("transactional id", extra={"transactional_id": self._slot.transactional_id})
        return self._slot.transactional_id

    def release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
