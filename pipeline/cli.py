"""Command line of the worker side: `python -m pipeline --help`."""

from __future__ import annotations

import click

from pipeline.localkafka_cli import kafka_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-pipeline")
def cli() -> None:
    """Streaming anomaly detection worker, local Kafka, alert tools."""


cli.add_command(kafka_group, name="kafka")


def main() -> None:
    cli()
