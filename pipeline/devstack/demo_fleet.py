"""The demo's per-machine part: a fleet of machines, per-machine models against a global one.

``make demo`` (without ``--single-model``) generates readings of a fleet whose machines run at
different operating points (``pipeline.devstack.fleet``), publishes two models of the same
data: ``sensors`` with one model per machine plus a fallback (``--entity-column machine_id``)
and ``sensors-global``, one model for the whole fleet (the machine column left out). The
worker serves the per-machine version and scores every record with the global one as its
shadow, whose score events go to a topic the demo reads, so the summary can say which
injected anomalies each caught on the very same records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.devstack.fleet import KINDS, fleet_frame, kind_of

LIVE = "sensors"
GLOBAL = "sensors-global"


def train_fleet(console: Console, data: Path, store: str | Path, rows: int, machines: int) -> str:
    """Write the fleet's normal readings, publish both models; the per-machine version."""
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    fleet_frame(rows, machines, seed=1).to_parquet(data)
    console.print(f"generated {rows} normal readings of {machines} machines -> {data}")
    common = {"data": str(data), "model_store": str(store), "id_column": "reading_id"}
    with console.status("training one model per machine (and the fallback)..."):
        live = fit(load_trainer_settings(name=LIVE, entity_column="machine_id", **common))
    assert live.entities is not None
    console.print(
        f"[green]published[/green] {LIVE}/{live.version}: {live.entities.models} machine "
        f"models + fallback in {live.training.duration_s:.1f}s (entity models "
        f"{live.training.model_dump().get('entity_fit_s', 0):.1f}s)"
    )
    with console.status("training the global model for comparison..."):
        other = fit(load_trainer_settings(name=GLOBAL, ignore_columns="machine_id", **common))
    console.print(f"[green]published[/green] {GLOBAL}/{other.version} (one model, all machines)")
    return live.version


def worker_env(shadow_topic: str) -> dict[str, str]:
    """The worker scores with the per-machine models and shadows them with the global one."""
    return {
        "PIPELINE_ID_FIELD": "reading_id",
        "PIPELINE_SHADOW_MODEL_NAME": GLOBAL,
        "PIPELINE_SHADOW_TOPIC": shadow_topic,
    }


def comparison(
    injected: set[str], live: set[str], shadow: set[str], normal: int
) -> tuple[Table, list[tuple[str, str]]]:
    """Per anomaly kind: caught by the per-machine models and by the global model; false alarms.

    ``live``/``shadow``: ids each model alerted on. Returns the table and its summary lines.
    """
    table = Table(title="per-machine models against the global model, same records")
    for col in ("", "per-machine models", "global model"):
        table.add_column(col, justify="left" if not col else "right")
    for kind in KINDS:
        ids = {i for i in injected if kind_of(i) == kind}
        table.add_row(
            f"{kind} anomalies caught",
            f"{len(ids & live)} / {len(ids)}",
            f"{len(ids & shadow)} / {len(ids)}",
        )
    table.add_row(
        "false alarms on normal readings",
        f"{len(live - injected)} / {normal}",
        f"{len(shadow - injected)} / {normal}",
    )
    only_live = len((injected & live) - shadow)
    only_global = len((injected & shadow) - live)
    lines = [
        ("caught only by the per-machine models", str(only_live)),
        ("caught only by the global model", str(only_global)),
    ]
    return table, lines


def shadow_alerts(events: list[dict[str, Any]]) -> set[str]:
    """Record ids the shadow (global) model would have alerted on."""
    return {str(e["record_id"]) for e in events if e.get("is_anomaly")}
