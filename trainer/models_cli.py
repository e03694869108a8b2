"""``python -m trainer models list|prune``: the versions in a model store, and retention.

Why here and not in the worker: only the trainer side writes the store; a worker never deletes.
Works on a directory or an object-store URL alike (:mod:`pipeline.contract.store`). Exit codes:
0 done, 2 bad store setting or credentials, 1 anything else.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import NoReturn

import click

from pipeline.contract.exceptions import ConfigError, PipelineError
from pipeline.contract.store import check_access, list_versions, prune

store_option = click.option(
    "--model-store",
    envvar="TRAINER_MODEL_STORE",
    default="model-store",
    show_default=True,
    help="Directory or fsspec URL of the model store [env TRAINER_MODEL_STORE].",
)
name_option = click.option(
    "--name", envvar="TRAINER_NAME", default="default", show_default=True, help="Model name."
)


@click.group(name="models")
def models() -> None:
    """List the versions of a model, or prune old ones."""


@models.command(name="list")
@store_option
@name_option
def list_cmd(model_store: str, name: str) -> None:
    """One JSON line per version, oldest first: version, complete (manifest there), latest,
    created_at; incomplete versions last."""
    try:
        check_access(model_store, "TRAINER_MODEL_STORE")
        versions = list_versions(model_store, name)
    except ConfigError as exc:
        _fail(2, str(exc))
    except PipelineError as exc:
        _fail(1, str(exc))
    for v in versions:
        click.echo(json.dumps(asdict(v)))


@models.command(name="prune")
@store_option
@name_option
@click.option("--keep", type=click.IntRange(min=1), required=True, help="Newest versions kept.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted, delete nothing.")
def prune_cmd(model_store: str, name: str, keep: int, dry_run: bool) -> None:
    """Delete complete versions beyond the newest KEEP; LATEST and incomplete versions (a
    publish may be under way) are never deleted. Prints each version removed."""
    try:
        check_access(model_store, "TRAINER_MODEL_STORE")
        removed = prune(model_store, name, keep, dry_run=dry_run)
    except ConfigError as exc:
        _fail(2, str(exc))
    except PipelineError as exc:
        _fail(1, str(exc))
    for version in removed:
        click.echo(version)
    click.echo(f"{'would remove' if dry_run else 'removed'} {len(removed)} version(s)", err=True)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
