"""Dev-stack commands: ``demo``, ``sample-data`` and ``produce-sample`` (``pipeline.devstack``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import click

import pipeline.devstack  # noqa: F401  (absent in the runtime image: the CLI says so)


@click.command()
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True
)
@click.option("--bootstrap", help="Use this Kafka instead of starting the local one.")
@click.option("--records", type=int, default=5000, show_default=True)
@click.option("--anomalies", type=int, default=50, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Records per second.")
@click.option("--keep-kafka", is_flag=True, help="Leave the local broker running afterwards.")
@click.option(
    "--single-model",
    is_flag=True,
    help="One model on uniform sensor data, instead of per-machine models on a fleet "
    "(compared live with a global model).",
)
@click.option("--machines", type=int, default=20, show_default=True, help="Machines in the fleet.")
@click.option(
    "--model-store",
    type=click.Choice(["local", "s3"]),
    default="local",
    show_default=True,
    help="local: a directory under --workdir; s3: an S3 bucket on a local S3Proxy (started and "
    "stopped by the demo) that trainer and worker reach through the AWS_* variables.",
)
def demo(
    workdir: Path,
    bootstrap: str | None,
    records: int,
    anomalies: int,
    rate: float,
    keep_kafka: bool,
    single_model: bool,
    machines: int,
    model_store: Literal["local", "s3"],
) -> None:
    """Run the whole job end to end on this machine and print alerts live."""
    from pipeline.common.logs import configure_logging
    from pipeline.devstack.demo import DemoConfig, run_demo

    configure_logging("WARNING", "text")
    cfg = DemoConfig(
        workdir=workdir,
        bootstrap=bootstrap,
        stream_rows=records,
        anomalies=anomalies,
        rate=rate,
        keep_kafka=keep_kafka,
        per_machine=not single_model,
        machines=machines,
        model_store=model_store,
    )
    sys.exit(run_demo(cfg))


@click.command("sample-data")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Parquet file.")
@click.option("--rows", type=int, default=20_000, show_default=True)
@click.option("--anomalies", type=int, default=0, help="Also write this many anomalies.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--machines",
    type=int,
    default=0,
    help="A fleet of this many machines with their own normal ranges (machine_id column), "
    "for per-machine models; 0: uniform sensor records.",
)
def sample_data(out: Path, rows: int, anomalies: int, seed: int, machines: int) -> None:
    """Write synthetic sensor records (normal by default) to a Parquet file."""
    from pipeline.devstack.fleet import fleet_frame, fleet_stream
    from pipeline.devstack.sampledata import mixed_stream, normal_frame

    if machines:
        frame = (
            fleet_stream(rows, anomalies, machines, seed)[0]
            if anomalies
            else fleet_frame(rows, machines, seed)
        )
    else:
        frame = mixed_stream(rows, anomalies, seed)[0] if anomalies else normal_frame(rows, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out)
    click.echo(str(out))


@click.command("produce-sample")
@click.option("--bootstrap", default="127.0.0.1:9092", show_default=True)
@click.option("--topic", default="records", show_default=True)
@click.option("--rate", type=float, default=100.0, show_default=True, help="Records per second.")
@click.option("--count", type=int, default=0, help="Stop after this many records (0: forever).")
@click.option("--anomaly-rate", type=float, default=0.01, show_default=True)
def produce_sample(
    bootstrap: str, topic: str, rate: float, count: int, anomaly_rate: float
) -> None:
    """Stream synthetic sensor records with injected anomalies to a topic (for demos)."""
    from pipeline.devstack.sampledata import stream_forever

    sent = stream_forever(bootstrap, topic, rate=rate, count=count, anomaly_rate=anomaly_rate)
    click.echo(f"sent {sent} records to {topic}")
