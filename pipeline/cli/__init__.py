"""Command line of the worker side: ``python -m pipeline --help``.

One module per command group; this one only names them. Commands are imported when they run
(or when ``--help`` lists them), so ``python -m pipeline run`` with a bad setting fails before
torch is imported, and the dev-stack commands (``kafka``, ``demo``, ``sample-data``,
``produce-sample``) work only where ``pipeline.devstack`` is installed: the runtime image
leaves it out and says so instead of failing with a traceback.

Exit codes are documented in each command's module (``run``: 0 clean stop, 2 bad
configuration, 3 unusable model, 4 Kafka, 1 anything else).
"""

from __future__ import annotations

import importlib
from typing import NoReturn

import click

# command name -> "module:attribute"; the order is the one ``--help`` lists.
COMMANDS: dict[str, str] = {
    "run": "pipeline.cli.run:run",
    "score": "pipeline.cli.score:score",
    "alerts": "pipeline.cli.alerts:alerts",
    "audit": "pipeline.cli.audit:audit",
    "settings-doc": "pipeline.cli.docs:settings_doc",
    "schema": "pipeline.cli.docs:schema",
    "kafka": "pipeline.cli.kafka:kafka_group",
    "s3": "pipeline.cli.s3:s3_group",
    "demo": "pipeline.cli.devstack:demo",
    "sample-data": "pipeline.cli.devstack:sample_data",
    "produce-sample": "pipeline.cli.devstack:produce_sample",
}
DEVSTACK = "pipeline.devstack"


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith(DEVSTACK):
                raise
            return _missing_devstack(cmd_name)
        command: click.Command = getattr(module, attr)
        return command


def _missing_devstack(name: str) -> click.Command:
    """Stands in for a dev-stack command where the dev stack is not installed."""

    @click.command(
        name,
        help="(not installed here: needs pipeline.devstack, part of a source checkout)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def missing() -> NoReturn:
        click.echo(
            f"error: `{name}` belongs to the local development stack (pipeline.devstack), which"
            " this installation leaves out (the runtime image does); run it from a source"
            " checkout with `make install`",
            err=True,
        )
        raise SystemExit(2)

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-pipeline")
def cli() -> None:
    """Streaming anomaly detection worker, local Kafka, alert tools."""


def main() -> None:
    cli()
