"""``python -m pipeline alerts tail|sink``: reading the alert topic.

``sink`` exit codes: 2 bad options, 4 Kafka failure, 5 the sink could not store a batch
(nothing committed; for a webhook: retries ran out). Alerts a webhook refuses are not a
failure: they go to the ``--dead-letter`` file.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pipeline.cli.common import fail, install_signal_handlers
from pipeline.contract.exceptions import ConfigError, KafkaIOError


@click.group()
def alerts() -> None:
    """Read the alert topic: follow it in a terminal, or copy it to a sink."""


@dataclass(frozen=True)
class AlertSource:
    """Where alerts are read and which are kept: the options `tail` and `sink` share."""

    kafka: Any
    topic: str
    keep: Any
    cooldown: Any
    idle_timeout_s: float | None


def _alert_options(f: Callable[..., None]) -> Callable[..., None]:
    """Connection and filter options shared by `alerts tail` and `alerts sink`, handed to the
    command as one ``source: AlertSource``."""
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

    @functools.wraps(f)
    def with_source(
        *,
        bootstrap: str | None,
        topic: str,
        model_name: str | None,
        model_version: str | None,
        min_score: float | None,
        since: str | None,
        cooldown: float,
        idle_timeout: float | None,
        **rest: Any,
    ) -> None:
        from pipeline.alert_consumers.tail import Cooldown

        source = AlertSource(
            kafka=_alert_kafka(bootstrap),
            topic=topic,
            keep=_alert_filter(model_name, model_version, min_score, since),
            cooldown=Cooldown(cooldown) if cooldown else None,
            idle_timeout_s=idle_timeout,
        )
        f(source=source, **rest)

    command: Callable[..., None] = with_source
    for option in reversed(options):
        command = option(command)
    return command


def _alert_kafka(bootstrap: str | None) -> Any:
    from pipeline.kafka.settings import KafkaSettings
    from pipeline.worker.settings import load_worker_settings

    try:
        kafka: KafkaSettings = load_worker_settings().kafka
    except ConfigError as exc:
        fail(2, str(exc))
    return kafka.model_copy(update={"bootstrap_servers": bootstrap}) if bootstrap else kafka


def _alert_filter(
    model_name: str | None, model_version: str | None, min_score: float | None, since: str | None
) -> Any:
    from pipeline.alert_consumers.tail import AlertFilter, parse_since

    try:
        since_ms = parse_since(since) if since else None
    except ConfigError as exc:
        fail(2, str(exc))
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
    source: AlertSource,
    from_beginning: bool,
    fmt: str,
    max_alerts: int | None,
) -> None:
    """Follow the alert topic and print alerts as they arrive (no consumer group, no commits)."""
    import threading

    from pipeline.alert_consumers.tail import format_pretty
    from pipeline.alert_consumers.tail import tail as run_tail

    tty = sys.stdout.isatty()
    pretty = fmt == "pretty" or (fmt == "auto" and tty)

    def emit(event: dict[str, Any]) -> None:
        line = format_pretty(event, color=tty) if pretty else json.dumps(event)
        click.echo(line)

    stop = threading.Event()
    install_signal_handlers(stop.set)
    try:
        stats = run_tail(
            source.kafka,
            source.topic,
            emit,
            keep=source.keep,
            cooldown=source.cooldown,
            start="beginning" if from_beginning else "end",
            max_alerts=max_alerts,
            idle_timeout_s=source.idle_timeout_s,
            stop=stop,
        )
    except KafkaIOError as exc:
        fail(4, str(exc))
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
@click.option(
    "--webhook",
    help="POST each alert as JSON to this http(s) URL (messages show its origin only).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    help="Webhook header 'Name: value' (repeatable); values are masked in every message.",
)
@click.option(
    "--webhook-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for each of connect, send, wait and read of one webhook request.",
)
@click.option(
    "--webhook-retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Retries of an alert after a connection error, timeout, 408, 429 or 5xx (backoff "
    "doubling from 0.5 s); then the sink exits 5 with the batch uncommitted.",
)
@click.option(
    "--dead-letter",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --webhook (required): append alerts the receiver refuses (4xx but 408/429, "
    "redirects not followed) to this JSONL file with the reason, and go on.",
)
def sink(
    source: AlertSource,
    group: str,
    jsonl: Path | None,
    parquet: Path | None,
    webhook: str | None,
    headers: tuple[str, ...],
    webhook_timeout: float,
    webhook_retries: int,
    dead_letter: Path | None,
) -> None:
    """Copy alerts to a JSONL file, Parquet files or a webhook (commit after each write,
    duplicates dropped by event_id). Exit codes: 2 bad options, 4 Kafka, 5 sink failure."""
    import threading

    from pipeline.alert_consumers.refused import DeadLetterFile
    from pipeline.alert_consumers.sinks import (
        AlertSink,
        JsonlSink,
        ParquetSink,
        SinkError,
        run_sink,
    )
    from pipeline.alert_consumers.webhook import WebhookSink
    from pipeline.common.logs import configure_logging

    configure_logging("INFO", "json")
    chosen = [x for x in (jsonl, parquet, webhook) if x]
    if len(chosen) != 1:
        fail(2, "choose exactly one of --jsonl, --parquet, --webhook")
    if bool(webhook) != bool(dead_letter):
        fail(2, "--webhook needs --dead-letter PATH (alerts the receiver refuses), and only it")
    extra = _parse_headers(headers)
    stop = threading.Event()
    install_signal_handlers(stop.set)
    try:
        target: AlertSink
        if jsonl:
            target = JsonlSink(jsonl)
        elif parquet:
            target = ParquetSink(parquet)
        else:
            target = WebhookSink(
                str(webhook),
                timeout_s=webhook_timeout,
                retries=webhook_retries,
                headers=extra,
                dead_letters=DeadLetterFile(Path(str(dead_letter))),
            )
        stats = run_sink(
            source.kafka,
            source.topic,
            group,
            target,
            keep=source.keep,
            cooldown=source.cooldown,
            idle_timeout_s=source.idle_timeout_s,
            stop=stop,
        )
    except SinkError as exc:
        fail(5, str(exc))
    except KafkaIOError as exc:
        fail(4, str(exc))
    click.echo(json.dumps(stats.as_dict()))


def _parse_headers(headers: tuple[str, ...]) -> dict[str, str]:
    """``--header 'Name: value'`` options as a dict. A malformed one is named by its position
    and name only: its text may be a token typed without the colon."""
    parsed = {}
    for number, header in enumerate(headers, 1):
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            fail(2, f"--header #{number}: expected 'Name: value' (not shown: may be a secret)")
        parsed[name.strip()] = value.strip()
    return parsed
