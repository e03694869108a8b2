"""Command line of the worker side: `python -m pipeline --help`.

Exit codes of `run`: 0 stopped cleanly, 2 bad configuration, 3 unusable model, 4 Kafka
failure that retries could not overcome, 1 anything else.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import click

from pipeline.exceptions import ArtifactError, ConfigError, KafkaIOError, PipelineError

log = logging.getLogger("pipeline")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-pipeline")
def cli() -> None:
    """Streaming anomaly detection worker, local Kafka, alert tools."""


@cli.command()
@click.option("--max-batches", type=int, help="Stop after this many batches (tests, replays).")
@click.option("--idle-timeout", type=float, help="Stop after this many seconds without records.")
def run(max_batches: int | None, idle_timeout: float | None) -> None:
    """Run the streaming worker (settings from PIPELINE_* env vars and .env)."""
    from pipeline.logs import configure_logging
    from pipeline.settings import load_worker_settings
    from pipeline.worker import Worker

    try:
        settings = load_worker_settings()
    except ConfigError as exc:
        _fail(2, str(exc))
    configure_logging(settings.log_level, settings.log_format)
    try:
        worker = Worker(settings)
    except ConfigError as exc:
        _fail(2, str(exc))
    except ArtifactError as exc:
        _fail(3, f"cannot load model: {exc}")
    _install_signal_handlers(worker.stop)
    try:
        summary = worker.run(max_batches=max_batches, idle_timeout_s=idle_timeout)
    except KafkaIOError as exc:
        _fail(4, str(exc))
    except PipelineError as exc:
        _fail(1, str(exc))
    click.echo(
        json.dumps(
            {
                "batches": summary.batches,
                "consumed": summary.consumed,
                "scored": summary.scored,
                "anomalies": summary.anomalies,
                "rejected": summary.rejected,
            }
        )
    )


@cli.command()
@click.argument("which", type=click.Choice(["alert"]))
def schema(which: str) -> None:
    """Print a contract's JSON Schema (the file in pipeline/schemas is generated from it)."""
    from pipeline.alerts import alert_json_schema

    click.echo(json.dumps(alert_json_schema(), indent=2, sort_keys=True))


def _install_signal_handlers(stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT drains and stops; a second SIGINT kills at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    cli()
