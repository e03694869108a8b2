"""``python -m pipeline score``: a Parquet dataset scored offline with a published model.

Exit codes: 2 bad data or options, 3 unusable model.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.common import fail
from pipeline.contract.exceptions import ArtifactError, ConfigError


@click.command()
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
    from pipeline.contract.exceptions import DataError
    from pipeline.offline.batch_scoring import score_parquet

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
        fail(2, str(exc))
    except ArtifactError as exc:
        fail(3, f"cannot load model: {exc}")
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
