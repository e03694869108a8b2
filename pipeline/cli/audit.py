"""``python -m pipeline audit``: account for every input record through the output topics.

Exit codes: 0 nothing lost, 1 records lost (or duplicated, with --fail-on-duplicates), 2 bad
configuration, 4 Kafka failure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pipeline.cli.common import fail
from pipeline.contract.exceptions import ConfigError, KafkaIOError


@click.command()
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
    from pipeline.alert_consumers.audit import audit as run_audit
    from pipeline.worker.settings import load_worker_settings

    try:
        settings = load_worker_settings()
    except ConfigError as exc:
        fail(2, str(exc))
    inputs = [t.strip() for t in (input_topic or settings.input_topic).split(",") if t.strip()]
    scores = scores_topic or settings.scores_topic
    if not scores:
        fail(2, "audit needs the scores topic: --scores-topic or PIPELINE_SCORES_TOPIC")
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
        fail(4, str(exc))
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
