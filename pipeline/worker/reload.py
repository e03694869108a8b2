"""Hot model reload: where new versions come from and how they replace the served one.

A :class:`ModelSlot` holds one served model (the live one, or the shadow candidate). LATEST in
the store names the version to serve; it is read every ``reload_interval_s`` and at once when
an announcement for the slot's model arrives on the announce topic (:class:`AnnounceListener`,
a background thread, calls ``offer``). ``maybe_reload`` runs in the worker loop *between*
batches: it loads the candidate, validates it (checksum, strict shapes and smoke batch in
``open_model``, plus the slot's own check, e.g. a feature spec compatible with the live one)
and only then swaps it in. A refused version is remembered so it is not retried every tick;
the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.contract.announce import decode_announcement
from pipeline.contract.exceptions import (
    ArtifactError,
    ArtifactNotFound,
    DataError,
    StoreUnavailable,
)
from pipeline.kafka.clients import new_consumer
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.serving import ModelHandle, ModelWatcher

log = logging.getLogger(__name__)

Role = Literal["live", "shadow"]
Opener = Callable[[str | None], ModelHandle]


class ModelSlot:
    """One served model and its reload policy."""

    def __init__(
        self,
        *,
        role: Role,
        name: str,
        pinned: str | None,
        watcher: ModelWatcher,
        opener: Opener,
        validate: Callable[[ModelHandle], None] | None = None,
        on_loaded: Callable[[ModelHandle, bool], None] | None = None,
        on_refused: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.role = role
        self.name = name
        self.pinned = pinned
        self.watcher = watcher
        self._open = opener
        self._validate = validate
        self._on_loaded = on_loaded
        self._on_refused = on_refused
        self.current: ModelHandle | None = None
        self._offered: str | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    def start(self) -> ModelHandle:
        """Load the pinned version or LATEST; errors propagate (the caller decides)."""
        handle = self._open(self.pinned)
        self._swap(handle)
        return handle

    def offer(self, version: str) -> None:
        """An announced version (thread-safe); picked up by the next ``maybe_reload``."""
        if self.pinned is None:
            with self._lock:
                self._offered = version

    def maybe_reload(self) -> ModelHandle | None:
        """Between batches: load a new version if one is offered or LATEST moved.

        Returns the new handle when it was swapped in, else None."""
        if self.pinned is not None:
            return None
        with self._lock:
            offered, self._offered = self._offered, None
        if offered is None:
            version = self.watcher.poll(self.version)
        else:
            # LATEST stays the source of truth: an announcement only makes us look at once.
            # (A replayed or overtaken announcement thus never rolls the model back.)
            version = self.watcher.check_now(self.version)
            if offered not in (version, self.version):
                log.info(
                    "announced version is not LATEST (yet); following LATEST",
                    extra={"role": self.role, "announced": offered, "latest": version},
                )
        if version is None:
            return None
        try:
            candidate = self._open(version)
            if self._validate is not None:
                self._validate(candidate)
        except (ArtifactNotFound, StoreUnavailable) as exc:
            # LATEST can name a version whose directory a slow shared volume does not show
            # yet, or an object store is unreachable: not refused, the next poll tries again
            log.warning(
                "model version named by LATEST not readable yet",
                extra={"role": self.role, "candidate": version, "error": str(exc)},
            )
            return None
        except (ArtifactError, RuntimeError, OSError, ValueError) as exc:
            # RuntimeError: e.g. CUDA out of memory moving the candidate to the GPU
            self.watcher.refuse(version)
            log.error(
                "new model refused, keeping the current one",
                extra={
                    "role": self.role,
                    "candidate": version,
                    "serving": self.version,
                    "error": str(exc),
                },
            )
            if self._on_refused is not None:
                self._on_refused(version, exc)
            return None
        old = self.version
        self._swap(candidate)
        log.info(
            "model reloaded",
            extra={"role": self.role, "from": old, "to": candidate.version, "announced": offered},
        )
        return candidate

    def _swap(self, handle: ModelHandle) -> None:
        """Replace the served handle; ``on_loaded(handle, reloaded)`` reports it."""
        reloaded = self.current is not None
        self.current = handle
        if self._on_loaded is not None:
            self._on_loaded(handle, reloaded)


class AnnounceListener:
    """Background consumer of the announce topic, offering announced versions to slots.

    Group-less (every worker sees every announcement). It starts at the first announcement
    newer than ``since_ms`` (the worker's start, just before it loaded LATEST), so nothing
    announced while the worker was starting is missed; older ones are covered by LATEST.
    Never raises: bad records are counted and skipped, Kafka errors logged and retried.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        slots: list[ModelSlot],
        on_record: Callable[[str], None] | None = None,
        poll_s: float = 0.5,
        since_ms: int | None = None,
    ) -> None:
        self.kafka = kafka
        self.since_ms = since_ms if since_ms is not None else int(time.time() * 1000)
        self.topic = topic
        self.slots = slots
        self.on_record = on_record or (lambda result: None)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self.assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="announce-listener", daemon=True)

    def start(self) -> AnnounceListener:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            while not self._stop.is_set():
                try:
                    if consumer is None:
                        consumer = new_consumer(
                            **self.kafka.client_kwargs(),
                            group_id=None,
                            enable_auto_commit=False,
                            isolation_level="read_committed",
                        )
                    if not self.assigned.is_set() and not self._assign(consumer):
                        self._stop.wait(1.0)
                        continue
                    polled = consumer.poll(timeout_ms=int(self.poll_s * 1000))
                except KafkaError as exc:
                    log.warning(
                        "announce topic unavailable, retrying",
                        extra={"topic": self.topic, "error": repr(exc)},
                    )
                    self._stop.wait(2.0)
                    continue
                for records in polled.values():
                    for rec in records:
                        self._handle(rec)
        finally:
            if consumer is not None:
                consumer.close()

    def _assign(self, consumer: KafkaConsumer) -> bool:
        ids = consumer.partitions_for_topic(self.topic)
        if not ids:
            return False
        parts = [TopicPartition(self.topic, p) for p in sorted(ids)]
        consumer.assign(parts)
        starts = consumer.offsets_for_times(dict.fromkeys(parts, self.since_ms))
        ends = consumer.end_offsets(parts)
        for tp in parts:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        self.assigned.set()
        log.info("listening for model announcements", extra={"topic": self.topic})
        return True

    def _handle(self, rec: Any) -> None:
        try:
            announcement = decode_announcement(rec.value)
        except DataError as exc:
            self.on_record("invalid")
            log.warning(
                "bad model announcement skipped",
                extra={
                    "source": f"{rec.topic}[{rec.partition}] offset={rec.offset}",
                    "error": str(exc),
                },
            )
            return
        matched = [s for s in self.slots if s.name == announcement.name and s.pinned is None]
        for slot in matched:
            slot.offer(announcement.version)
        self.on_record("offered" if matched else "ignored")
        log.info(
            "model announcement",
            extra={
                "name": announcement.name,
                "version": announcement.version,
                "roles": [s.role for s in matched],
            },
        )
