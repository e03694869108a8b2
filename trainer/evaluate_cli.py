"""`python -m trainer evaluate`: detection metrics of a published model on labelled Parquet.

Prints one JSON object (roc_auc, pr_auc, precision/recall/F1 at the published threshold,
counts, model) on stdout and, with ``--report DIR``, writes the charts and report.html there.
Exit codes: 0 done, 2 bad configuration (flags, env, matplotlib missing), 3 bad data (no such
file or label column, labels that are not binary, a single class), 4 unusable model (not in
the store, or refused on load), 1 anything else.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from pipeline.contract.exceptions import (
    ArtifactError,
    ConfigError,
    DataError,
    FeatureSpecError,
    PipelineError,
)


@click.command()
@click.option(
    "--data", required=True, help="Parquet file, directory, glob or URL of labelled rows."
)
@click.option(
    "--label-column",
    help="Column saying which rows are anomalies; default: the one given at training time.",
)
@click.option(
    "--anomaly-value",
    "anomaly_values",
    multiple=True,
    help="Label value that means anomaly (repeatable); default: 1/true anomaly, 0/false normal.",
)
@click.option("--model-store", help="Directory of the model store (env TRAINER_MODEL_STORE).")
@click.option("--name", help="Model name inside the store (env TRAINER_NAME).")
@click.option("--version", help="Model version; default: the one LATEST names.")
@click.option("--report", "report_dir", help="Write charts and report.html into this directory.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to score (env TRAINER_DEVICE).",
)
def evaluate(
    data: str,
    label_column: str | None,
    anomaly_values: tuple[str, ...],
    model_store: str | None,
    name: str | None,
    version: str | None,
    report_dir: str | None,
    device: str | None,
) -> None:
    """Score labelled rows with a published model; print ROC-AUC, PR-AUC, P/R/F1 as JSON."""
    from trainer.evaluate import EvaluationRequest
    from trainer.evaluate import evaluate as run_evaluate
    from trainer.report import write_report
    from trainer.settings import load_trainer_settings

    try:
        settings = load_trainer_settings(model_store=model_store, name=name, device=device)
        result = run_evaluate(
            EvaluationRequest(
                data=data,
                model_store=settings.model_store,
                name=settings.name,
                version=version,
                label_column=label_column,
                anomaly_values=anomaly_values,
                device=settings.device,
                batch_rows=settings.read_batch_rows,
            )
        )
        summary = result.summary()
        if report_dir:
            report = write_report(result, report_dir)
            summary["report"] = str(report.html)
    except ConfigError as exc:
        _fail(2, str(exc))
    except (DataError, FeatureSpecError) as exc:
        _fail(3, str(exc))
    except ArtifactError as exc:
        _fail(4, f"cannot use the model: {exc}")
    except PipelineError as exc:
        _fail(1, str(exc))
    click.echo(json.dumps(summary, indent=2))


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
