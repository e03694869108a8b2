"""``python -m pipeline run``: the streaming worker.

Exit codes: 0 stopped cleanly, 2 bad configuration (before torch is imported), 3 unusable
model, 4 Kafka failure that retries could not overcome, 1 anything else.
"""

from __future__ import annotations

import json
import os

import click

from pipeline.cli.common import fail, install_signal_handlers, log
from pipeline.contract.exceptions import ArtifactError, ConfigError, KafkaIOError, PipelineError


@click.command()
@click.option("--max-batches", type=int, help="Stop after this many batches (tests, replays).")
@click.option("--idle-timeout", type=float, help="Stop after this many seconds without records.")
def run(max_batches: int | None, idle_timeout: float | None) -> None:
    """Run the streaming worker (settings from PIPELINE_* env vars and .env)."""
    from pipeline.common.envvars import unknown_env
    from pipeline.common.logs import configure_logging
    from pipeline.worker.settings import WorkerSettings, load_worker_settings

    try:
        settings = load_worker_settings()
    except ConfigError as exc:
        fail(2, str(exc))  # before torch is even imported: a bad setting fails in a blink
    configure_logging(settings.log_level, settings.log_format)
    for problem in unknown_env(os.environ, "PIPELINE_", WorkerSettings):
        log.warning(problem)
    from pipeline.worker.loop import Worker

    try:
        worker = Worker(settings)
    except ConfigError as exc:
        fail(2, str(exc))
    except ArtifactError as exc:
        fail(3, f"cannot load model: {exc}")
    install_signal_handlers(worker.stop)
    try:
        summary = worker.run(max_batches=max_batches, idle_timeout_s=idle_timeout)
    except KafkaIOError as exc:
        fail(4, str(exc))
    except PipelineError as exc:
        fail(1, str(exc))
    click.echo(json.dumps(summary.as_dict()))
