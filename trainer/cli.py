"""Command line of the trainer: `python -m trainer --help`."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fit, publish and evaluate autoencoder anomaly models."""


def main() -> None:
    cli()
