"""Command line of the worker side: `python -m pipeline --help`.

Exit codes of `run`: 0 stopped cleanly, 2 bad configuration, 3 unusable model, 4 Kafka
failure that retries could not overcome, 1 anything else. `alerts sink` adds 5: the sink
could not store a batch (nothing committed).
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


@cli.group()
def alerts() -> None:
    """Read the alert topic: follow it in a terminal, or copy it to a sink."""


def _alert_options(f: Callable[..., None]) -> Callable[..., None]:
    """Connection and filter options shared by `alerts tail` and `alerts sink`."""
    options = [
        click.option(
            "--bootstrap",
            envvar="PIPELINE_KAFKA__BOOTSTRAP_SERVERS",
            help="Kafka host:port list [env PIPELINE_KAFKA__BOOTSTRAP_SERVERS]; other "
            "PIPELINE_KAFKA__* settings (SASL, TLS) apply too.",
        ),
        click.option(
            "--topic",
            envvar="PIPELINE_ALERT_TOPIC",
            default="anomalies",
            show_default=True,
            help="Alert topic [env PIPELINE_ALERT_TOPIC].",
        ),
        click.option("--model", "model_name", help="Only alerts of this model name."),
        click.option("--version", "model_version", help="Only alerts of this model version."),
        click.option("--min-score", type=float, help="Only alerts with at least this score."),
        click.option(
            "--since", help="Only records from this time on: 15m, 2h, 1d or ISO 8601 (UTC)."
        ),
        click.option(
            "--cooldown",
            type=click.FloatRange(min=0),
            default=0.0,
            help="Seconds: at most one alert per entity key per window; the rest are "
            "counted as suppressed.",
        ),
        click.option(
            "--idle-timeout", type=float, help="Stop after this many seconds without records."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _alert_kafka(bootstrap: str | None) -> Any:
    from pipeline.settings import KafkaSettings, load_worker_settings

    try:
        kafka: KafkaSettings = load_worker_settings().kafka
    except ConfigError as exc:
        _fail(2, str(exc))
    return kafka.model_copy(update={"bootstrap_servers": bootstrap}) if bootstrap else kafka


def _alert_filter(
    model_name: str | None, model_version: str | None, min_score: float | None, since: str | None
) -> Any:
    from pipeline.alert_tools import AlertFilter, parse_since

    try:
        since_ms = parse_since(since) if since else None
    except ConfigError as exc:
        _fail(2, str(exc))
    return AlertFilter(model_name, model_version, min_score, since_ms)


@alerts.command()
@_alert_options
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert, not the newest.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "pretty", "json"]),
    default="auto",
    show_default=True,
    help="auto: pretty on a terminal, JSON lines when piped.",
)
@click.option("--max", "max_alerts", type=click.IntRange(1), help="Stop after this many alerts.")
def tail(
    bootstrap: str | None,
    topic: str,
    model_name: str | None,
    model_version: str | None,
    min_score: float | None,
    since: str | None,
    cooldown: float,
    idle_timeout: float | None,
    from_beginning: bool,
    fmt: str,
    max_alerts: int | None,
) -> None:
    """Follow the alert topic and print alerts as they arrive (no consumer group, no commits)."""
    import threading

    from pipeline.alert_tools import Cooldown, format_pretty
    from pipeline.alert_tools import tail as run_tail

    kafka = _alert_kafka(bootstrap)
    keep = _alert_filter(model_name, model_version, min_score, since)
    tty = sys.stdout.isatty()
    pretty = fmt == "pretty" or (fmt == "auto" and tty)

    def emit(event: dict[str, Any]) -> None:
        line = format_pretty(event, color=tty) if pretty else json.dumps(event)
        click.echo(line)

    stop = threading.Event()
    _install_signal_handlers(stop.set)
    try:
        stats = run_tail(
            kafka,
            topic,
            emit,
            keep=keep,
            cooldown=Cooldown(cooldown) if cooldown else None,
            start="beginning" if from_beginning else "end",
            max_alerts=max_alerts,
            idle_timeout_s=idle_timeout,
            stop=stop,
        )
    except KafkaIOError as exc:
        _fail(4, str(exc))
    click.echo(
        f"{stats.shown} shown, {stats.filtered} filtered out, {stats.suppressed} suppressed "
        f"by cooldown, {stats.invalid} not alert events",
        err=True,
    )


@alerts.command()
@_alert_options
@click.option("--group", default="alert-sink", show_default=True, help="Consumer group.")
@click.option("--jsonl", type=click.Path(path_type=Path), help="Append alerts to this file.")
@click.option(
    "--parquet", type=click.Path(path_type=Path), help="Write alert files to this directory."
)
@click.option("--webhook", help="POST each alert as JSON to this http(s) URL.")
@click.option(
    "--header", "headers", multiple=True, help="Webhook header 'Name: value' (repeatable)."
)
def sink(
    bootstrap: str | None,
    topic: str,
    model_name: str | None,
    model_version: str | None,
    min_score: float | None,
    since: str | None,
    cooldown: float,
    idle_timeout: float | None,
    group: str,
    jsonl: Path | None,
    parquet: Path | None,
    webhook: str | None,
    headers: tuple[str, ...],
) -> None:
    """Copy alerts to a JSONL file, Parquet files or a webhook (commit after each write,
    duplicates dropped by event_id). Exit codes: 2 bad options, 4 Kafka, 5 sink failure."""
    import threading

    from pipeline.alert_sinks import (
        AlertSink,
        JsonlSink,
        ParquetSink,
        SinkError,
        WebhookSink,
        run_sink,
    )
    from pipeline.alert_tools import Cooldown
    from pipeline.logs import configure_logging

    configure_logging("INFO", "json")
    chosen = [x for x in (jsonl, parquet, webhook) if x]
    if len(chosen) != 1:
        _fail(2, "choose exactly one of --jsonl, --parquet, --webhook")
    kafka = _alert_kafka(bootstrap)
    keep = _alert_filter(model_name, model_version, min_score, since)
    extra = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            _fail(2, f"--header {header!r}: expected 'Name: value'")
        extra[name.strip()] = value.strip()
    stop = threading.Event()
    _install_signal_handlers(stop.set)
    try:
        target: AlertSink
        if jsonl:
            target = JsonlSink(jsonl)
        elif parquet:
            target = ParquetSink(parquet)
        else:
            target = WebhookSink(str(webhook), headers=extra)
        stats = run_sink(
            kafka,
            topic,
            group,
            target,
            keep=keep,
            cooldown=Cooldown(cooldown) if cooldown else None,
            idle_timeout_s=idle_timeout,
            stop=stop,
        )
    except SinkError as exc:
        _fail(5, str(exc))
    except KafkaIOError as exc:
        _fail(4, str(exc))
    click.echo(json.dumps(stats.as_dict()))


cli.add_command(kafka_group, name="kafka")


def main() -> None:
    cli()
