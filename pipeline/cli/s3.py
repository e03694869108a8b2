"""``python -m pipeline s3 start|stop|status|env``: the local S3 server (S3Proxy) from a shell.

``start`` prints the endpoint as its last stdout line; ``env`` prints ``export`` lines for the
AWS variables that point the model store at it: ``eval "$(python -m pipeline s3 env)"``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import click

from pipeline.cli.common import EXIT_NOT_RUNNING
from pipeline.cli.common import state_dir_option as common_state_dir_option
from pipeline.devstack.locals3 import ENV_STATE_DIR, LocalS3, LocalS3Error

T = TypeVar("T")
state_dir_option = common_state_dir_option(ENV_STATE_DIR, "Server", "./.s3-local")


@click.group(name="s3")
def s3_group() -> None:
    """Run a local S3-compatible object store (S3Proxy, filesystem backend, from Maven)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@s3_group.command()
@state_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: free).")
@click.option("--bucket", "buckets", multiple=True, help="Bucket to create (repeatable).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to ready.")
def start(
    state_dir: Path | None, port: int | None, buckets: tuple[str, ...], timeout: float
) -> None:
    """Start S3Proxy (or report the running one); last stdout line: the endpoint."""
    record = _run(lambda: LocalS3(state_dir).start(port=port, buckets=buckets, timeout=timeout))
    click.echo(record.endpoint)


@s3_group.command()
@state_dir_option
def stop(state_dir: Path | None) -> None:
    """Stop the server of this state directory (quiet when none runs)."""
    stopped = _run(lambda: LocalS3(state_dir).stop())
    click.echo("stopped" if stopped else "not running", err=True)


@s3_group.command()
@state_dir_option
def status(state_dir: Path | None) -> None:
    """Print the running server as JSON (credential left out); exit 3 when none runs."""
    record = LocalS3(state_dir).status()
    if record is None:
        click.echo("not running", err=True)
        raise SystemExit(EXIT_NOT_RUNNING)
    click.echo(json.dumps({k: v for k, v in asdict(record).items() if k != "credential"}))


@s3_group.command()
@state_dir_option
def env(state_dir: Path | None) -> None:
    """Print ``export AWS_...`` lines for the running server (its fixed test credential)."""
    record = LocalS3(state_dir).status()
    if record is None:
        click.echo("not running: python -m pipeline s3 start", err=True)
        raise SystemExit(EXIT_NOT_RUNNING)
    for key, value in record.env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except LocalS3Error as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
