"""Command line of the trainer: `python -m trainer --help`.

Flags override ``TRAINER_*`` env vars, which override ``.env``. Exit codes: 0 published,
2 bad configuration, 3 bad data, 4 published but the Kafka announcement failed (the version
is still printed), 1 anything else; on failure (other than 4) nothing is published.
``evaluate`` lives in ``trainer.evaluate_cli`` (its exit codes are documented there).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

import click

from pipeline.common.envvars import unknown_env
from pipeline.common.logs import configure_logging
from pipeline.contract.artifact import manifest_summary
from pipeline.contract.exceptions import (
    AnnounceError,
    ConfigError,
    DataError,
    FeatureSpecError,
    PipelineError,
)
from trainer.evaluate_cli import evaluate
from trainer.models_cli import models
from trainer.settings import TrainerSettings, load_trainer_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="text")
def cli(log_level: str, log_format: str) -> None:
    """Fit, publish and evaluate autoencoder anomaly models."""
    configure_logging(log_level, log_format)


@cli.command()
@click.option("--data", help="Parquet file, directory, glob or fsspec URL of NORMAL rows.")
@click.option("--model-store", help="Directory or fsspec URL (s3://...) of the model store.")
@click.option("--name", help="Model name inside the store.")
@click.option("--model", type=click.Choice(["ae", "vae", "dae"]), help="Architecture.")
@click.option("--id-column", help="Column carried through, never a feature.")
@click.option("--label-column", help="Column never used for fitting.")
@click.option("--ignore-columns", help="Comma-separated columns to leave out.")
@click.option("--categorical-columns", help="Comma-separated columns to treat as categorical.")
@click.option("--numeric-columns", help="Comma-separated columns to treat as numeric.")
@click.option("--max-categories", type=int, help="Most frequent values kept per categorical.")
@click.option(
    "--max-levels", type=int, help="Numeric columns with 2..N distinct values: categorical."
)
@click.option(
    "--heavy-tail-ratio",
    type=float,
    help="Numeric columns whose tail reaches this many IQRs: log-compressed (0: never).",
)
@click.option("--missing", type=click.Choice(["impute", "reject"]), help="Serving null policy.")
@click.option("--entity-column", help="One model per value of this column, plus a fallback.")
@click.option("--min-entity-rows", type=int, help="Fewest rows for an entity's own model.")
@click.option("--entity-batch-size", type=int, help="Rows of each entity per step.")
@click.option("--entity-epochs", type=int, help="Most epochs of the entity models.")
@click.option("--entity-learning-rate", type=float, help="Learning rate of the entity models.")
@click.option("--entities", help="Comma-separated entities to refit; the rest are reused.")
@click.option("--base-version", help="Version whose other entity models are reused.")
@click.option("--max-steps", type=int, help="Training budget in optimiser steps.")
@click.option("--epochs", type=int, help="Most epochs (default: from --max-steps).")
@click.option("--batch-size", type=int)
@click.option("--learning-rate", type=float)
@click.option("--weight-decay", type=float)
@click.option("--patience", type=int, help="Early stopping: epochs without validation gain.")
@click.option("--members", type=int, help="Autoencoders in the ensemble (ae, dae).")
@click.option(
    "--diversity",
    type=float,
    help="Ensemble: train on the members' error minus this share of their variance "
    "(default: 0.75 from 1,000 fit rows, else 0).",
)
@click.option(
    "--spread-weight",
    type=float,
    help="Ensemble score: mean reconstruction's error plus this times the members' variance "
    "(default: 0 from 1,000 fit rows, else 1).",
)
@click.option(
    "--normalize-errors/--no-normalize-errors",
    default=None,
    help="Divide each error unit by its mean error on the select rows.",
)
@click.option(
    "--whiten-residuals/--no-whiten-residuals",
    default=None,
    help="Decorrelate the continuous units' residuals before squaring them (default: off; "
    "for anomalies that break relations between correlated readings).",
)
@click.option(
    "--shuffled-negatives/--no-shuffled-negatives",
    default=None,
    help="Also train the model to reconstruct column-shuffled rows badly (default: off; "
    "for anomalies that break relations between columns; training takes twice as long).",
)
@click.option("--hidden-dims", help="Comma-separated layer sizes, e.g. 64,32.")
@click.option("--latent-dim", type=int)
@click.option("--activation", type=click.Choice(["relu", "gelu", "silu", "tanh", "leaky_relu"]))
@click.option("--dropout", type=float)
@click.option("--norm", type=click.Choice(["none", "batch", "layer"]))
@click.option("--beta", type=float, help="VAE: weight of the KL term.")
@click.option("--noise", type=click.Choice(["gaussian", "mask"]), help="DAE corruption.")
@click.option("--noise-level", type=float, help="DAE: noise std or masking probability.")
@click.option("--score", type=click.Choice(["reconstruction", "elbo"]), help="Record score.")
@click.option("--quantile", type=float, help="Threshold quantile of calibration scores.")
@click.option(
    "--target-fpr", type=float, help="False-alarm rate to aim for (instead of --quantile)."
)
@click.option("--validation-fraction", type=float, help="Share of rows selecting the model.")
@click.option("--calibration-fraction", type=float, help="Share of rows calibrating the threshold.")
@click.option("--split-by", help="Time or entity column keeping related rows on one side.")
@click.option(
    "--split-kind", type=click.Choice(["auto", "time", "entity"]), help="How --split-by is read."
)
@click.option(
    "--drop-drifting-columns/--no-drop-drifting-columns",
    default=None,
    help="Time split: leave out numeric columns whose latest rows are out of their fit range.",
)
@click.option("--seed", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option(
    "--mixed-precision/--no-mixed-precision", default=None, help="Autocast (CUDA, bf16 CPUs)."
)
@click.option("--memory-budget-mb", type=int, help="Cache rows in RAM up to this; else stream.")
@click.option("--shuffle-buffer-mb", type=float, help="Rows held to shuffle batches.")
@click.option("--read-batch-rows", type=int, help="Rows per Parquet read batch.")
@click.option("--checkpoint-dir", help="Checkpoint every epoch here; rerun to resume.")
@click.option("--progress", type=click.Choice(["auto", "bar", "log"]), help="Progress display.")
@click.option("--announce-topic", help="Kafka topic to announce the new version on.")
def fit(**flags: Any) -> None:
    """Fit a model on normal rows and publish it; prints the new version last.

    Under ``torchrun --nproc-per-node N -m trainer fit ...`` every rank trains on its own
    shard and rank 0 publishes (and prints the version).
    """
    import os

    from trainer.fit import fit as run_fit  # torch import only when needed

    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        settings = load_trainer_settings(**flags)
        for problem in unknown_env(os.environ, "TRAINER_", TrainerSettings):
            logging.getLogger("trainer").warning(problem)
        manifest = run_fit(settings)
    except ConfigError as exc:
        _fail(2, str(exc))
    except (DataError, FeatureSpecError) as exc:
        _fail(3, str(exc))
    except AnnounceError as exc:
        if main_rank:
            click.echo(exc.version)
        _fail(4, str(exc))
    except PipelineError as exc:
        _fail(1, str(exc))
    if main_rank:
        click.echo(json.dumps(manifest_summary(manifest)), err=True)
        click.echo(manifest.version)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


cli.add_command(evaluate)
cli.add_command(models)


def main() -> None:
    cli()
