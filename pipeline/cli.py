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
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click

from pipeline.exceptions import ArtifactError, ConfigError, KafkaIOError, PipelineError
from pipeline.localkafka_cli import kafka_group

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
    click.echo(json.dumps(summary.as_dict()))


@cli.command()
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True
)
@click.option("--bootstrap", help="Use this Kafka instead of starting the local one.")
@click.option("--records", type=int, default=5000, show_default=True)
@click.option("--anomalies", type=int, default=50, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Records per second.")
@click.option("--keep-kafka", is_flag=True, help="Leave the local broker running afterwards.")
def demo(
    workdir: Path,
    bootstrap: str | None,
    records: int,
    anomalies: int,
    rate: float,
    keep_kafka: bool,
) -> None:
    """Run the whole job end to end on this machine and print alerts live."""
    from pipeline.demo import DemoConfig, run_demo
    from pipeline.logs import configure_logging

    configure_logging("WARNING", "text")
    cfg = DemoConfig(
        workdir=workdir,
        bootstrap=bootstrap,
        stream_rows=records,
        anomalies=anomalies,
        rate=rate,
        keep_kafka=keep_kafka,
    )
    sys.exit(run_demo(cfg))


@cli.command("sample-data")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Parquet file.")
@click.option("--rows", type=int, default=20_000, show_default=True)
@click.option("--anomalies", type=int, default=0, help="Also write this many anomalies.")
@click.option("--seed", type=int, default=1, show_default=True)
def sample_data(out: Path, rows: int, anomalies: int, seed: int) -> None:
    """Write synthetic sensor records (normal by default) to a Parquet file."""
    from pipeline.sampledata import mixed_stream, normal_frame

    frame = mixed_stream(rows, anomalies, seed)[0] if anomalies else normal_frame(rows, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out)
    click.echo(str(out))


@cli.command("produce-sample")
@click.option("--bootstrap", default="127.0.0.1:9092", show_default=True)
@click.option("--topic", default="records", show_default=True)
@click.option("--rate", type=float, default=100.0, show_default=True, help="Records per second.")
@click.option("--count", type=int, default=0, help="Stop after this many records (0: forever).")
@click.option("--anomaly-rate", type=float, default=0.01, show_default=True)
def produce_sample(
    bootstrap: str, topic: str, rate: float, count: int, anomaly_rate: float
) -> None:
    """Stream synthetic sensor records with injected anomalies to a topic (for demos)."""
    from pipeline.sampledata import stream_forever

    sent = stream_forever(bootstrap, topic, rate=rate, count=count, anomaly_rate=anomaly_rate)
    click.echo(f"sent {sent} records to {topic}")


@cli.command("settings-doc")
def settings_doc() -> None:
    """Print the Markdown tables of every worker and trainer setting (for README.md)."""
    from pipeline.settings import WorkerSettings
    from pipeline.settings_doc import markdown_table
    from trainer.settings import TrainerSettings

    click.echo("### Worker (`python -m pipeline run`)\n")
    click.echo(markdown_table(WorkerSettings, "PIPELINE_"))
    click.echo("\n### Trainer (`python -m trainer fit`; flags override env)\n")
    click.echo(markdown_table(TrainerSettings, "TRAINER_"))


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


cli.add_command(kafka_group, name="kafka")


def main() -> None:
    cli()
