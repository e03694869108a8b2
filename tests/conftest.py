"""Shared fixtures: a real Kafka broker per session, started only when a test asks for one.

Use an existing broker with ``--kafka-bootstrap HOST:PORT`` or ``PIPELINE_TEST_KAFKA_BOOTSTRAP``
(PLAINTEXT). Otherwise the first test that needs ``kafka_bootstrap`` starts a
:class:`~pipeline.devstack.localkafka.LocalKafka` in a temporary state dir; if that fails, the tests
error out. They never skip: a silently skipped integration suite looks exactly like a green one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaError

from pipeline.devstack.localkafka import LocalKafka, LocalKafkaError, open_admin
from pipeline.kafka.socket_leak import close_failed_connects
from tests.support.faults import Workers
from tests.support.kafka import create_topic

BOOTSTRAP_ENV = "PIPELINE_TEST_KAFKA_BOOTSTRAP"
START_TIMEOUT_S = 120.0
KAFKA_FIXTURES = frozenset(
    {"kafka_bootstrap", "kafka_admin", "make_topic", "local_kafka", "private_kafka"}
)


def pytest_configure(config: pytest.Config) -> None:
    """Clients the tests build directly get the same socket fix as the project's own, so a
    leaked socket anywhere fails the run (ResourceWarning is an error in pyproject)."""
    close_failed_connects()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        default=None,
        help=f"use this running PLAINTEXT broker instead of a local one (env {BOOTSTRAP_ENV})",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture ``kafka``, so ``-m 'not kafka'`` is reliable."""
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def external_bootstrap(config: pytest.Config) -> str | None:
    option = config.getoption("--kafka-bootstrap")
    return str(option) if option else os.environ.get(BOOTSTRAP_ENV) or None


def start_or_fail(broker: LocalKafka, timeout: float = START_TIMEOUT_S) -> None:
    """Start ``broker``; a failure fails (errors) the requesting test with the broker's reason."""
    try:
        broker.start(timeout=timeout)
    except LocalKafkaError as exc:
        pytest.fail(f"could not start a local Kafka broker: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def shared_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafka | None]:
    """The session's broker, or None when an external one was given."""
    if external_bootstrap(request.config):
        yield None
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-shared"))
    start_or_fail(broker)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, shared_kafka: LocalKafka | None) -> str:
    """``host:port`` of a ready PLAINTEXT broker shared by the whole session."""
    if shared_kafka is not None:
        return shared_kafka.bootstrap
    bootstrap = external_bootstrap(request.config)
    assert bootstrap is not None
    try:
        with open_admin(bootstrap, bootstrap_timeout_ms=15_000) as admin:
            admin.describe_cluster()
    except Exception as exc:
        pytest.fail(f"external Kafka broker {bootstrap} is not usable: {exc!r}", pytrace=False)
    return bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    """A session-wide ``KafkaAdminClient`` on ``kafka_bootstrap``."""
    with open_admin(kafka_bootstrap, request_timeout_ms=30_000) as admin:
        yield admin


@pytest.fixture
def make_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=1) -> name``: a fresh uuid-named topic, visible when returned."""
    created: list[str] = []

    def make(partitions: int = 1, *, config: dict[str, str] | None = None) -> str:
        name = create_topic(kafka_admin, partitions, config=config)
        created.append(name)
        return name

    yield make
    if created:
        with contextlib.suppress(KafkaError):  # a dead broker is reported by the test itself
            kafka_admin.delete_topics(created, raise_errors=False)


@pytest.fixture
def local_kafka(shared_kafka: LocalKafka | None) -> Iterator[LocalKafka]:
    """The shared :class:`LocalKafka`, read-only: stopping or restarting it fails the test."""
    if shared_kafka is None:
        pytest.fail(
            "local_kafka needs the locally launched broker, but an external one was given; "
            "use private_kafka for broker-lifecycle tests",
            pytrace=False,
        )
    pid = shared_kafka.pid
    yield shared_kafka
    if shared_kafka.pid != pid:
        if not shared_kafka.is_running():
            start_or_fail(shared_kafka)  # keep the rest of the session usable
        pytest.fail("this test stopped/restarted the shared broker; use private_kafka", False)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Callable[..., LocalKafka]]:
    """Factory for independent brokers (own state dir) that a test may stop, restart or break.

    ``private_kafka(port=None, scram_users=None, start=True, **LocalKafka kwargs)``; all are
    stopped after the test.
    """
    brokers: list[LocalKafka] = []
    numbers = itertools.count()

    def make(*, start: bool = True, timeout: float = START_TIMEOUT_S, **kwargs: Any) -> LocalKafka:
        broker = LocalKafka(tmp_path / f"kafka-private-{next(numbers)}", **kwargs)
        brokers.append(broker)
        if start:
            start_or_fail(broker, timeout)
        return broker

    yield make
    errors = []
    for broker in reversed(brokers):
        try:
            broker.stop()
        except LocalKafkaError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Run torch single-threaded for the test: tiny models on a shared 2-core machine train
    several times faster without OpenMP threads spinning against other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Real worker processes (``python -m pipeline run``) a test starts, kills and restarts;
    every one still running is stopped afterwards."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()
