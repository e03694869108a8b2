"""Generated documentation: ``settings-doc`` (README's tables) and ``schema`` (contract files)."""

from __future__ import annotations

import json

import click


@click.command("settings-doc")
def settings_doc() -> None:
    """Print the Markdown tables of every worker and trainer setting (for README.md)."""
    from pipeline.common.settings_doc import markdown_table
    from pipeline.worker.settings import WorkerSettings
    from trainer.settings import TrainerSettings

    click.echo("### Worker (`python -m pipeline run`)\n")
    click.echo(markdown_table(WorkerSettings, "PIPELINE_"))
    click.echo("\n### Trainer (`python -m trainer fit`; flags override env)\n")
    click.echo(markdown_table(TrainerSettings, "TRAINER_"))


@click.command()
@click.argument("which", type=click.Choice(["alert"]))
def schema(which: str) -> None:
    """Print a contract's JSON Schema (the file in pipeline/schemas is generated from it)."""
    from pipeline.contract.alerts import alert_json_schema

    click.echo(json.dumps(alert_json_schema(), indent=2, sort_keys=True))
