"""Shared fixtures: a real Kafka broker per session, started only when a test asks for one.

Use an existing broker with ``--kafka-bootstrap HOST:PORT`` or ``PIPELINE_TEST_KAFKA_BOOTSTRAP``
(PLAINTEXT). Otherwise the first test that needs ``kafka_bootstrap`` starts a
:class:`~pipeline.devstack.localkafka.LocalKafka` in a temporary state dir; if that fails, the tests
error out. They never skip: a silently skipped integration suite looks exactly like a green one.

``--kafka-brokers 3`` (or ``PIPELINE_TEST_KAFKA_BROKERS=3``) runs the whole suite against a local
three-node cluster instead. The cluster fault tests (marker ``cluster``) ask for ``kafka_cluster``:
that cluster when the suite runs on one, else a three-node cluster of their own, started once per
session; ``cluster`` hands it to one test and restarts any node the test left stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaError

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import LocalKafka, LocalKafkaError, open_admin
from pipeline.kafka.socket_leak import close_leaked_sockets
from tests.support.faults import Workers
from tests.support.kafka import create_topic, settle_cluster

BOOTSTRAP_ENV = "PIPELINE_TEST_KAFKA_BOOTSTRAP"
BROKERS_ENV = "PIPELINE_TEST_KAFKA_BROKERS"
START_TIMEOUT_S = 120.0
CLUSTER_START_TIMEOUT_S = 240.0  # three JVMs starting at once on two shared cores
# the suite's brokers run with C1-only JIT and serial GC (LocalKafka.fast_start): each start or
# restart takes ~1.5 s less on two cores, and dozens happen in a run
FAST_START = True
KAFKA_FIXTURES = frozenset(
    {"kafka_bootstrap", "kafka_admin", "make_topic", "local_kafka", "private_kafka"}
)
CLUSTER_FIXTURES = frozenset({"kafka_cluster", "cluster"})
SharedKafka = LocalKafka | LocalKafkaCluster
LEFT_OUT_FULL_RUN_ONLY = pytest.StashKey[int]()  # slow tests the default run left out
LEFT_OUT_KEY = "left_out_full_run_only"  # the same count, from an xdist worker
# `make test` runs two xdist workers with --dist loadgroup: every test that needs a broker is in
# this group, so one worker runs them all, in order, with one session broker and cluster, while
# the other runs the rest (unit, offline, store tests: about 3.5 of the suite's 18 minutes on 2
# cores, run serially); fault tests never share the machine with a second broker
BROKER_GROUP = "kafka-broker"
# --dist loadgroup that honours those groups on pytest 9.2 (xdist 3.8's own does not)
pytest_plugins = ["tests.support.xdist_groups"]


def pytest_configure(config: pytest.Config) -> None:
    """Clients the tests build directly get the same socket fix as the project's own, so a
    leaked socket anywhere fails the run (ResourceWarning is an error in pyproject)."""
    close_leaked_sockets()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        default=None,
        help=f"use this running PLAINTEXT broker instead of a local one (env {BOOTSTRAP_ENV})",
    )
    parser.addoption(
        "--kafka-brokers",
        type=int,
        default=None,
        help=f"run the suite against a local cluster of this many nodes (env {BROKERS_ENV})",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture ``kafka``, so ``-m 'not kafka'`` is reliable,
    and put them all in one xdist group; leave the slow tests without a short form out of the
    default run."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if (KAFKA_FIXTURES | CLUSTER_FIXTURES) & names:
            item.add_marker(pytest.mark.kafka)
        if CLUSTER_FIXTURES & names:
            item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("kafka") or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.xdist_group(BROKER_GROUP))
    # the three-node cluster's fault tests last (a stable sort): under `make test` they then run
    # once the other worker's unit tests no longer take the second core (they ran 20-40%
    # slower beside them, the margin their timeouts are sized with)
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
    deselect_full_form_only(config, items)


def full_form_only(item: pytest.Item) -> bool:
    """A ``slow`` test with no short form (``slow(default_run=False)``: a fault's second
    delivery mode, whose first mode the default run covers)."""
    marker = item.get_closest_marker("slow")
    return marker is not None and marker.kwargs.get("default_run", True) is False


def deselect_full_form_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default run (no ``-m``) executes every ``slow`` test in its short form; a test that
    has none runs only when a marker expression selects it (``-m slow``) or it is named by
    node id, so the default run stays within its time budget (CONTRIBUTING.md)."""
    if config.option.markexpr:
        return
    named = set(config.args)
    skipped = [
        item
        for item in items
        if full_form_only(item) and not named & {item.nodeid, item.nodeid.split("[")[0]}
    ]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        left_out = set(skipped)
        items[:] = [item for item in items if item not in left_out]
        config.stash[LEFT_OUT_FULL_RUN_ONLY] = len(skipped)
        if hasattr(config, "workeroutput"):  # an xdist worker: tell the controller too
            config.workeroutput[LEFT_OUT_KEY] = len(skipped)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller collects nothing itself: it learns from its workers what they left
    out (they all collect the same tests), so its summary says it as a plain run's does."""
    left_out = getattr(node, "workeroutput", {}).get(LEFT_OUT_KEY, 0)
    if left_out:
        node.config.stash[LEFT_OUT_FULL_RUN_ONLY] = left_out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say in every log (CI's too) what the default run left out and how to run it."""
    skipped = config.stash.get(LEFT_OUT_FULL_RUN_ONLY, 0)
    if skipped:
        terminalreporter.write_line(
            f"{skipped} slow tests without a short form deselected (a fault's second delivery "
            "mode); -m slow runs them"
        )


def external_bootstrap(config: pytest.Config) -> str | None:
    option = config.getoption("--kafka-bootstrap")
    return str(option) if option else os.environ.get(BOOTSTRAP_ENV) or None


def suite_brokers(config: pytest.Config) -> int:
    """How many local nodes the shared Kafka of this session has (1: a single broker)."""
    option = config.getoption("--kafka-brokers")
    return int(option or os.environ.get(BROKERS_ENV) or 1)


def start_or_fail(broker: SharedKafka, timeout: float = START_TIMEOUT_S) -> None:
    """Start ``broker``; a failure fails (errors) the requesting test with the broker's reason."""
    try:
        broker.start(timeout=timeout)
    except LocalKafkaError as exc:
        pytest.fail(f"could not start a local Kafka broker: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def shared_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedKafka | None]:
    """The session's broker (or cluster), or None when an external one was given."""
    if external_bootstrap(request.config):
        yield None
        return
    brokers = suite_brokers(request.config)
    broker: SharedKafka
    if brokers > 1:
        broker = LocalKafkaCluster(
            tmp_path_factory.mktemp("kafka-shared-cluster"), brokers, fast_start=FAST_START
        )
        start_or_fail(broker, CLUSTER_START_TIMEOUT_S)
    else:
        broker = LocalKafka(tmp_path_factory.mktemp("kafka-shared"), fast_start=FAST_START)
        start_or_fail(broker)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, shared_kafka: SharedKafka | None) -> str:
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
def local_kafka(shared_kafka: SharedKafka | None) -> Iterator[LocalKafka]:
    """The shared :class:`LocalKafka`, read-only: stopping or restarting it fails the test."""
    if not isinstance(shared_kafka, LocalKafka):
        pytest.fail(
            "local_kafka needs the locally launched single broker, but an external one or a "
            "cluster was given; use private_kafka for broker-lifecycle tests",
            pytrace=False,
        )
    pid = shared_kafka.pid
    yield shared_kafka
    if shared_kafka.pid != pid:
        if not shared_kafka.is_running():
            start_or_fail(shared_kafka)  # keep the rest of the session usable
        pytest.fail("this test stopped/restarted the shared broker; use private_kafka", False)


@pytest.fixture(scope="session")
def kafka_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafkaCluster]:
    """A local three-node cluster for the whole session: the suite's own when it runs on one,
    else one started here (apart from the single broker, which the other tests keep using)."""
    if suite_brokers(request.config) >= 3 and not external_bootstrap(request.config):
        shared = request.getfixturevalue("shared_kafka")
        assert isinstance(shared, LocalKafkaCluster)
        yield shared
        return
    cluster = LocalKafkaCluster(
        tmp_path_factory.mktemp("kafka-cluster"), 3, heap="384m", fast_start=FAST_START
    )
    start_or_fail(cluster, CLUSTER_START_TIMEOUT_S)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kafka_cluster: LocalKafkaCluster) -> Iterator[LocalKafkaCluster]:
    """The session's cluster for one test that may stop, kill, freeze or restart its nodes;
    afterwards every node runs again (a frozen one is resumed first)."""
    for node in kafka_cluster.nodes.values():
        if not node.is_running():
            start_or_fail(node, CLUSTER_START_TIMEOUT_S)
    yield kafka_cluster
    heal(kafka_cluster)


def heal(cluster: LocalKafkaCluster) -> None:
    """Resume frozen nodes and start stopped ones, so the next test gets a whole cluster."""
    for node in cluster.nodes.values():
        pid = node.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    start_or_fail(cluster, CLUSTER_START_TIMEOUT_S)
    settle_cluster(cluster.bootstrap)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Callable[..., LocalKafka]]:
    """Factory for independent brokers (own state dir) that a test may stop, restart or break.

    ``private_kafka(port=None, scram_users=None, start=True, **LocalKafka kwargs)``, started
    with ``fast_start`` as every broker of the suite unless told otherwise; all are stopped
    after the test.
    """
    brokers: list[LocalKafka] = []
    numbers = itertools.count()

    def make(*, start: bool = True, timeout: float = START_TIMEOUT_S, **kwargs: Any) -> LocalKafka:
        kwargs.setdefault("fast_start", FAST_START)
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


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch single-threaded inside, as before afterwards: tiny models on a shared 2-core
    machine train several times faster without OpenMP threads spinning against other
    processes. For module-scoped fixtures that train; tests use ``torch_one_thread``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Run torch single-threaded for the test (``one_torch_thread``)."""
    with one_torch_thread():
        yield


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Real worker processes (``python -m pipeline run``) a test starts, kills and restarts;
    every one still running is stopped afterwards."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()
