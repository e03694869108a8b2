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


@cli.command()
@click.option("--data", required=True, help="Parquet file or directory of Parquet files.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Parquet to write.")
@click.option("--model-store", required=True, help="Directory of the model store.")
@click.option("--name", required=True, help="Model name inside the store.")
@click.option("--version", "model_version", help="Model version (default: LATEST).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--top-k", type=click.IntRange(0, 100), default=3, show_default=True)
@click.option("--batch-rows", type=click.IntRange(1), default=65_536, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def score(
    data: str,
    out: Path,
    model_store: str,
    name: str,
    model_version: str | None,
    device: str,
    top_k: int,
    batch_rows: int,
    as_json: bool,
) -> None:
    """Score a Parquet dataset with a published model (backfills, replays, dry runs).

    Writes id, score, is_anomaly and top_features per input row and prints how many rows
    the model would alert on. Exit codes: 2 bad data or options, 3 unusable model.
    """
    from pipeline.batch_scoring import score_parquet
    from pipeline.exceptions import DataError

    try:
        summary = score_parquet(
            data,
            out,
            model_store,
            name,
            model_version,
            device=device,
            top_k=top_k,
            batch_rows=batch_rows,
        )
    except (ConfigError, DataError) as exc:
        _fail(2, str(exc))
    except ArtifactError as exc:
        _fail(3, f"cannot load model: {exc}")
    info = summary.as_dict()
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(
        f"scored {info['rows']} rows with {info['model']}/{info['version']} "
        f"in {info['seconds']} s ({info['rows_per_s']} rows/s) -> {info['out']}\n"
        f"alerts: {info['anomalies']} ({100 * info['alert_rate']:.3f}% of rows; "
        f"threshold {info['threshold']:.6g} is the {summary.quantile} quantile of held-out "
        f"normal rows, so about {100 * info['expected_rate_on_normal_data']:.3f}% on normal data)"
    )


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
