"""Command line of the worker side: `python -m pipeline --help`.

Exit codes of `run`: 0 stopped cleanly, 2 bad configuration, 3 unusable model, 4 Kafka
failure that retries could not overcome, 1 anything else. `audit`: 0 nothing lost, 1 records
lost, 2 bad configuration, 4 Kafka failure.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

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
@click.option("--input-topic", help="Input topic(s), comma-separated [PIPELINE_INPUT_TOPIC].")
@click.option("--scores-topic", help="Scores topic [PIPELINE_SCORES_TOPIC].")
@click.option("--dlq-topic", help="Dead-letter topic [PIPELINE_DLQ_TOPIC].")
@click.option("--group", help="Group whose committed offsets mark what is due [PIPELINE_GROUP_ID].")
@click.option("--no-group", is_flag=True, help="Every input record is due (ignore commits).")
@click.option(
    "--isolation",
    type=click.Choice(["read_committed", "read_uncommitted"]),
    default="read_committed",
    show_default=True,
    help="How output topics are read (exactly-once consumers use read_committed).",
)
@click.option("--fail-on-duplicates", is_flag=True, help="Exit 1 on duplicates too.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per topic.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def audit(
    input_topic: str | None,
    scores_topic: str | None,
    dlq_topic: str | None,
    group: str | None,
    no_group: bool,
    isolation: str,
    fail_on_duplicates: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Account for every input record: scored or dead-lettered, lost, duplicated.

    Kafka connection and topic defaults come from the worker's PIPELINE_* settings. Exit 0
    when nothing is lost, 1 when records are lost (or duplicated, with --fail-on-duplicates),
    2 bad configuration, 4 Kafka failure."""
    from pipeline.audit import audit as run_audit
    from pipeline.settings import load_worker_settings

    try:
        settings = load_worker_settings()
    except ConfigError as exc:
        _fail(2, str(exc))
    inputs = [t.strip() for t in (input_topic or settings.input_topic).split(",") if t.strip()]
    scores = scores_topic or settings.scores_topic
    if not scores:
        _fail(2, "audit needs the scores topic: --scores-topic or PIPELINE_SCORES_TOPIC")
    try:
        report = run_audit(
            settings.kafka,
            inputs,
            scores,
            dlq_topic or settings.dlq_topic,
            group_id=None if no_group else (group or settings.group_id),
            isolation_level=isolation,
            timeout_s=timeout,
        )
    except KafkaIOError as exc:
        _fail(4, str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_audit(report)
    bad = not report.ok or (fail_on_duplicates and report.duplicates > 0)
    sys.exit(1 if bad else 0)


def _print_audit(report: Any) -> None:
    columns = ("records", "due", "scored", "dead_lettered", "lost", "duplicates", "pending")
    click.echo(f"{'partition':<40} {'committed':>10} " + " ".join(f"{c:>13}" for c in columns))
    for p in report.partitions:
        values = " ".join(f"{getattr(p, c):>13}" for c in columns)
        click.echo(f"{p.name:<40} {p.committed!s:>10} {values}")
        if p.lost_offsets:
            click.echo(f"  lost offsets (first {len(p.lost_offsets)}): {p.lost_offsets}")
    totals = " ".join(f"{getattr(report, c):>13}" for c in columns)
    click.echo(f"{'total':<40} {'':>10} {totals}")
    summary = report.summary()
    for key in ("dlq_reasons", "uncommitted_output", "unknown_output", "open_transactions"):
        if summary[key]:
            click.echo(f"{key}: {summary[key]}")
    click.echo("OK: nothing lost" if report.ok else f"LOST: {report.lost} records")


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
