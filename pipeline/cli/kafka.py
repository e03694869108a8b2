"""``python -m pipeline kafka start|stop|status``: the local broker or cluster from a shell.

``start`` prints progress on stderr and the bootstrap address as its last stdout line, so
scripts can do ``BOOTSTRAP=$(python -m pipeline kafka start | tail -n1)``. ``--brokers 3``
starts a three-node KRaft cluster instead (``pipeline.devstack.localcluster``); ``stop`` and
``status`` find it through the state directory, ``--node N`` acts on one node of it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click

from pipeline.cli.common import EXIT_NOT_RUNNING
from pipeline.cli.common import state_dir_option as common_state_dir_option
from pipeline.devstack.localcluster import LocalKafkaCluster, describe, is_cluster, status_json
from pipeline.devstack.localkafka import (
    ENV_STATE_DIR,
    ENV_VERSION,
    LocalKafka,
    LocalKafkaError,
    ScramUser,
)

ENV_SCRAM_PASSWORD = "PIPELINE_KAFKA_SCRAM_PASSWORD"  # noqa: S105  (a variable name, not a secret)
state_dir_option = common_state_dir_option(ENV_STATE_DIR, "Broker", "./.kafka-local")
node_option = click.option(
    "--node",
    type=click.IntRange(1, 9),
    default=None,
    help="Only this node of a cluster started with --brokers.",
)


@click.group(name="kafka")
def kafka_group() -> None:
    """Run a local Apache Kafka broker or KRaft cluster (real jars from Maven Central)."""
    _configure_logging()


@kafka_group.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Client port.")
@state_dir_option
@click.option("--version", "kafka_version", envvar=ENV_VERSION, default=None, help="Kafka release.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to ready.")
@click.option("--heap", default="512m", show_default=True, help="JVM -Xmx of the broker.")
@click.option(
    "--scram-user",
    "scram_names",
    multiple=True,
    help=f"Enable SASL/SCRAM and create this user; password from ${ENV_SCRAM_PASSWORD}.",
)
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="Start a KRaft cluster of this many nodes (fixed at its first start).",
)
@node_option
@click.option(
    "--fast-start",
    is_flag=True,
    help="C1-only JIT and serial GC: starts sooner on a small machine (not for benchmarks).",
)
def start(
    port: int | None,
    state_dir: Path | None,
    kafka_version: str | None,
    timeout: float,
    heap: str,
    scram_names: tuple[str, ...],
    brokers: int | None,
    node: int | None,
    fast_start: bool,
) -> None:
    """Start the broker in the background; the last stdout line is its bootstrap address."""
    if brokers is not None or node is not None or is_cluster(state_dir):
        if port is not None or scram_names:
            raise click.UsageError("--port and --scram-user are for a single broker only")
        _start_cluster(state_dir, brokers, kafka_version, heap, timeout, node, fast_start)
        return
    try:
        broker = LocalKafka(
            state_dir, port=port, version=kafka_version, scram_users=_scram_users(scram_names),
            heap=heap, fast_start=fast_start,
        )  # fmt: skip
        timing = broker.start(timeout=timeout)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    state = "already running" if timing.adopted else f"ready in {timing.seconds:.1f}s"
    click.echo(f"kafka {state}; log: {broker.log_path}", err=True)
    click.echo(broker.bootstrap)


def _start_cluster(
    state_dir: Path | None,
    brokers: int | None,
    version: str | None,
    heap: str,
    timeout: float,
    node: int | None,
    fast_start: bool,
) -> None:
    try:
        cluster = LocalKafkaCluster(state_dir, brokers, version, heap=heap, fast_start=fast_start)
        seconds = cluster.start(timeout, node=node)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    what = f"node {node}" if node is not None else f"cluster of {len(cluster.nodes)} nodes"
    click.echo(f"kafka {what} ready in {seconds:.1f}s; state: {cluster.state_dir}", err=True)
    click.echo(cluster.bootstrap)


@kafka_group.command()
@state_dir_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="SIGKILL after.")
@node_option
def stop(state_dir: Path | None, timeout: float, node: int | None) -> None:
    """Stop the broker (every node of a cluster, or --node N) started from the state directory
    (no-op if none runs)."""
    if node is not None or is_cluster(state_dir):
        try:
            nodes = LocalKafkaCluster(state_dir).stop(node, timeout=timeout)
        except LocalKafkaError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"stopped nodes {nodes}" if nodes else "not running", err=True)
        return
    try:
        stopped = LocalKafka(state_dir).stop(timeout=timeout)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("stopped" if stopped else "not running", err=True)


@kafka_group.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@click.pass_context
def status(ctx: click.Context, state_dir: Path | None, as_json: bool) -> None:
    """Say whether a broker runs (exit 0) or not (exit 3), with its bootstrap and pid; for a
    cluster, each node and the active controller (exit 3 unless every node runs)."""
    if is_cluster(state_dir):
        cluster_status = LocalKafkaCluster(state_dir).status()
        click.echo(status_json(cluster_status) if as_json else describe(cluster_status))
        if len(cluster_status.running) < len(cluster_status.nodes):
            ctx.exit(EXIT_NOT_RUNNING)
        return
    record = LocalKafka(state_dir).status()
    if as_json:
        click.echo(
            json.dumps({"running": record is not None, **(asdict(record) if record else {})})
        )
    elif record is None:
        click.echo("not running")
    else:
        click.echo(f"running bootstrap={record.bootstrap} pid={record.pid} log={record.log_path}")
    if record is None:
        ctx.exit(EXIT_NOT_RUNNING)


def _scram_users(names: tuple[str, ...]) -> list[ScramUser]:
    """Passwords come from the environment, never argv, so `ps` and shell history stay clean."""
    if not names:
        return []
    password = os.environ.get(ENV_SCRAM_PASSWORD)
    if not password:
        raise LocalKafkaError(f"--scram-user needs the password in ${ENV_SCRAM_PASSWORD}")
    return [ScramUser(name, password) for name in names]


def _configure_logging() -> None:
    """Progress on stderr (stdout is reserved for results); our INFO, others' warnings."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    package_logger = logging.getLogger("pipeline")
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
