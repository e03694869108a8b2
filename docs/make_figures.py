"""Draw the figures in docs/img from the project's own parts.

    .venv/bin/python docs/make_figures.py              # both figures (about 5 minutes)
    .venv/bin/python docs/make_figures.py architecture # the diagram only (seconds)

* ``architecture.png``: the components and the data flow, drawn with matplotlib.
* ``dashboard.png``: the Grafana dashboard's panels over a REAL run: a local Apache Kafka
  broker, a model trained by ``trainer.fit`` on synthetic sensor data, the worker as its own
  process (``python -m pipeline run``) and a local Prometheus scraping it with the project's
  rules. A producer walks the stream through four phases (steady, a load step, malformed
  records, drifting sensors); afterwards every panel's own PromQL from
  ``deploy/grafana/dashboards/anomaly-pipeline.json`` is read back with ``query_range``.

Needs the dev install plus ``make tools`` (prometheus). Prints the numbers it plots.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import msgspec
import numpy as np
from kafka import KafkaProducer
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from pipeline.devstack.localkafka import LocalKafka, free_ports
from pipeline.devstack.localprom import LocalPrometheus, LocalPrometheusError
from pipeline.devstack.sampledata import mixed_stream, normal_frame, to_records
from pipeline.kafka.settings import KafkaSettings
from pipeline.kafka.topics import ensure_topics
from trainer.fit import fit
from trainer.settings import load_trainer_settings

ROOT = Path(__file__).resolve().parents[1]

IMG = ROOT / "docs" / "img"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "anomaly-pipeline.json"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "anomaly-pipeline.rules.yml"
BG, PANEL, GRID, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]


# ----------------------------------------------------------------------------- diagram
BATCH, SERVING, TOPIC, OPS = "#d7e8fb", "#cfe6c3", "#fde8c8", "#eadcf5"
BOXES = {  # name: (x, y, w, h, colour, body)
    "Parquet": (0.3, 5.2, 2.5, 1.4, BATCH, "normal rows\nfile, dir, s3://, gs://"),
    "trainer fit": (
        3.5,
        5.2,
        3.0,
        1.4,
        BATCH,
        "AE / VAE / DAE\nthreshold = q-quantile\nof held-out scores",
    ),
    "model store": (
        7.2,
        5.2,
        3.1,
        1.4,
        SERVING,
        "<name>/<version>/ weights,\nmanifest (quantiles)\n<name>/LATEST, atomic",
    ),
    "input topic": (
        0.3,
        2.6,
        2.5,
        1.8,
        TOPIC,
        "Kafka, N partitions\nJSON records or\nfloat32 fast path",
    ),
    "workers (one group)": (
        3.5,
        2.3,
        3.9,
        2.1,
        SERVING,
        (
            "micro-batch on size or wait\ndecode, score (torch GPU/CPU)\n"
            "alerts + dead letters, flush,\nthen commit offsets\ndrift monitor: PSI, 1 - q"
        ),
    ),
    "alert topic": (8.2, 3.5, 2.4, 0.95, TOPIC, "anomaly events"),
    "dead letters": (8.2, 2.25, 2.4, 0.95, TOPIC, "bytes + dlq.reason"),
    "alert consumers": (11.3, 3.5, 2.4, 0.95, OPS, "alerts tail / sink"),
    "Prometheus": (3.5, 0.3, 2.5, 1.0, OPS, "scrapes /metrics, rules"),
    "Grafana": (6.7, 0.3, 2.2, 1.0, OPS, "dashboard"),
    "KEDA": (9.6, 0.3, 2.5, 1.0, OPS, "workers <= partitions,\nscaled on group lag"),
}
ARROWS = [  # from (x, y), to (x, y), label, label offset, colour, curvature
    ((2.8, 5.9), (3.5, 5.9), "read", (0, 0.1), "#333333", 0.0),
    ((6.5, 5.9), (7.2, 5.9), "publish", (0, 0.1), "#333333", 0.0),
    ((8.4, 5.2), (6.6, 4.4), "load, hot reload", (1.2, 0.0), "#333333", -0.2),
    ((2.8, 3.5), (3.5, 3.5), "poll", (0, 0.1), "#333333", 0.0),
    ((7.4, 3.95), (8.2, 3.95), "", (0, 0), "#333333", 0.0),
    ((7.4, 2.75), (8.2, 2.75), "", (0, 0), "#333333", 0.0),
    ((10.6, 3.95), (11.3, 3.95), "", (0, 0), "#333333", 0.0),
    ((4.75, 2.3), (4.75, 1.3), "metrics", (0.35, 0), "#7a4f9a", 0.0),
    ((6.0, 0.8), (6.7, 0.8), "", (0, 0), "#7a4f9a", 0.0),
    ((9.6, 1.0), (7.2, 2.3), "replicas", (0.5, 0.15), "#7a4f9a", 0.15),
]


def architecture(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(14, 7), dpi=150)
    fig.patch.set_facecolor("white")
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 7)
    ax.axis("off")
    for name, (x, y, w, h, colour, body) in BOXES.items():
        shape = FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.03,rounding_size=0.1",
            facecolor=colour,
            edgecolor="#333333",
            linewidth=1.1,
        )
        ax.add_patch(shape)
        ax.text(x + w / 2, y + h - 0.15, name, ha="center", va="top", fontsize=11, weight="bold")
        ax.text(x + w / 2, y + h - 0.5, body, ha="center", va="top", fontsize=8.5, linespacing=1.3)
    for start, end, label, (dx, dy), colour, rad in ARROWS:
        arrow = FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            linewidth=1.3,
            color=colour,
            connectionstyle=f"arc3,rad={rad}",
        )
        ax.add_patch(arrow)
        if label:
            mx, my = (start[0] + end[0]) / 2 + dx, (start[1] + end[1]) / 2 + dy
            ax.text(mx, my, label, ha="center", va="bottom", fontsize=8, color="#444444")
    for i, (colour, what) in enumerate(
        [(BATCH, "batch job"), (SERVING, "serving"), (TOPIC, "Kafka topic"), (OPS, "operations")]
    ):
        ax.add_patch(
            FancyBboxPatch(
                (11.3 + (i % 2) * 1.35, 6.2 - (i // 2) * 0.45),
                0.3,
                0.25,
                boxstyle="round,pad=0.01",
                facecolor=colour,
                edgecolor="#333333",
            )
        )
        ax.text(11.7 + (i % 2) * 1.35, 6.32 - (i // 2) * 0.45, what, fontsize=8, va="center")
    fig.savefig(out, bbox_inches="tight", facecolor=fig.get_facecolor())
    plt.close(fig)


# ------------------------------------------------------------------------------- demo run
@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # records per second
    malformed: float = 0.0  # share of broken records
    drift: float = 0.0  # temperature offset (degrees) reached at the end of the phase


PHASES = [
    Phase("steady 400/s", 60, 400),
    Phase("overload 3000/s", 45, 3000),
    Phase("3% malformed", 45, 400, malformed=0.03),
    Phase("temperature drifts", 80, 400, drift=20.0),
]


def produce_phases(bootstrap: str, topic: str, marks: list[tuple[float, str]]) -> int:
    """Stream the phases in chunks of 0.1 s; returns how many records were sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=1 << 20)
    rng = np.random.default_rng(42)
    sent, drift_from = 0, 0.0
    try:
        for phase in PHASES:
            marks.append((time.time(), phase.name))
            started, in_phase = time.monotonic(), 0
            while (elapsed := time.monotonic() - started) < phase.seconds:
                n = max(1, int(phase.rate * 0.1))
                n_anom = int(rng.binomial(n, 0.01))
                frame, _ = mixed_stream(n - n_anom, n_anom, seed=sent)
                if phase.drift:
                    offset = drift_from + (phase.drift - drift_from) * elapsed / phase.seconds
                    frame["temperature"] += offset
                for rec in to_records(frame):
                    value = msgspec.json.encode(rec)
                    if rng.random() < phase.malformed:
                        value = value[: len(value) // 2] if rng.random() < 0.5 else b"[]"
                    producer.send(topic, key=str(rec["machine_id"]).encode(), value=value)
                sent += n
                in_phase += n
                time.sleep(max(0.0, in_phase / phase.rate - (time.monotonic() - started)))
            drift_from = phase.drift or drift_from
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return sent


Results = dict[str, list[dict[str, Any]]]


def demo_run(workdir: Path) -> tuple[Results, list[tuple[float, str]], dict[str, Any]]:
    """Run everything, return {expr: query_range result}, phase marks and a summary."""
    kafka = LocalKafka(workdir / "kafka")
    kafka.start(timeout=180)
    try:
        bootstrap = kafka.bootstrap
        normal_frame(20_000, seed=1).to_parquet(workdir / "normal.parquet")
        manifest = fit(
            load_trainer_settings(
                data=str(workdir / "normal.parquet"), model_store=str(workdir / "models"),
                name="sensors", id_column="machine_id", epochs=40, device="cpu", seed=0,
            )
        )  # fmt: skip
        print(f"model {manifest.version}: threshold {manifest.threshold.value:.4f}", flush=True)
        ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), ["records"], partitions=3)
        (port,) = free_ports(1)
        env = {
            **os.environ,
            "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "PIPELINE_INPUT_TOPIC": "records",
            "PIPELINE_MODEL_STORE": str(workdir / "models"),
            "PIPELINE_MODEL_NAME": "sensors",
            "PIPELINE_ID_FIELD": "machine_id",
            "PIPELINE_DEVICE": "cpu",
            "PIPELINE_METRICS_PORT": str(port),
            "PIPELINE_METRICS_HOST": "127.0.0.1",
            "PIPELINE_DRIFT_HALF_LIFE_RECORDS": "5000",
            "PIPELINE_LOG_LEVEL": "WARNING",
        }
        log = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"], env=env, cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        prom = LocalPrometheus(
            workdir / "prometheus", {"anomaly-worker": [f"127.0.0.1:{port}"]},
            rule_files=[RULES], interval_s=2.0,
        )  # fmt: skip
        with prom:
            _wait(lambda: prom.targets_up() == 1, 120, "worker scraped")
            marks: list[tuple[float, str]] = []
            start = time.time()
            sent = produce_phases(bootstrap, "records", marks)
            time.sleep(15)  # let the worker drain and Prometheus scrape the tail
            end = time.time()
            results = {  # Grafana's $__rate_interval: 4 scrape intervals at this resolution
                t["expr"]: prom.query_range(
                    t["expr"].replace("$__rate_interval", "8s"), start, end, 2.0
                )
                for p in _panels()
                for t in p["targets"]
            }
            summary = {
                "records_sent": sent,
                "duration_s": round(end - start),
                "firing": sorted(
                    {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
                ),
                "threshold": manifest.threshold.value,
            }
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
        return results, marks, summary
    finally:
        kafka.stop()


def _wait(probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except LocalPrometheusError:
            pass  # still starting
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- dashboard
PLOTTED = [
    "Throughput",
    "Latency percentiles",
    "Batch size",
    "Consumer lag by partition",
    "Anomaly rate against expected",
    "Score drift (PSI)",
    "Dead letters by reason",
    "Scores against the threshold",
]


def _panels() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    by_title = {p["title"]: p for p in panels if p["type"] == "timeseries"}
    return [by_title[t] for t in PLOTTED]


def _legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out.replace("{{instance}}", "").strip() or "value"


def _fmt_axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int) -> str:
        if unit == "percentunit":
            return f"{v * 100:.1f}%"
        if unit == "s":
            return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.1f} s"
        if unit == "reqps":
            return f"{v:,.0f}/s" if abs(v) >= 10 else f"{v:.2g}/s"
        return f"{v:,.3g}"

    ax.yaxis.set_major_formatter(FuncFormatter(fmt))


def dashboard(
    results: dict[str, list[dict[str, Any]]], marks: list[tuple[float, str]],
    summary: dict[str, Any], out: Path,
) -> None:  # fmt: skip
    panels = _panels()
    t0 = marks[0][0]
    fig, axes = plt.subplots(4, 2, figsize=(16, 15), dpi=110)
    fig.patch.set_facecolor(BG)
    for ax, panel in zip(axes.flat, panels, strict=True):
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=MUTED, labelsize=8)
        ax.grid(color=GRID, linewidth=0.6)
        ax.set_title(panel["title"], color=TEXT, fontsize=11, loc="left", pad=8)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        color_i = 0
        for target in panel["targets"]:
            for series in results[target["expr"]]:
                ts = np.array([float(v[0]) for v in series["values"]]) - t0
                ys = np.array([float(v[1]) for v in series["values"]])
                name = _legend(target["legendFormat"], series["metric"])
                style = "--" if name.startswith("alert ") else "-"
                color = "#f2495c" if name.startswith("alert ") else COLORS[color_i % len(COLORS)]
                if not name.startswith("alert "):
                    color_i += 1
                ax.plot(ts, ys, style, color=color, linewidth=1.4, label=name)
        if panel["title"] == "Score drift (PSI)":
            ax.axhline(0.1, color="#ff9830", linewidth=0.8, linestyle=":")
            ax.axhline(0.2, color="#f2495c", linewidth=0.8, linestyle=":")
        if (
            panel["fieldConfig"]["defaults"]["custom"].get("scaleDistribution", {}).get("type")
            == "log"
        ):
            ax.set_yscale("log")
        if unit != "none":
            _fmt_axis(ax, unit)
        for when, name in marks:
            ax.axvline(when - t0, color=MUTED, linewidth=0.7, linestyle=":")
            ax.text(when - t0 + 2, 1.0, name, transform=ax.get_xaxis_transform(), color=MUTED,
                    fontsize=7, va="top")  # fmt: skip
        ax.set_xlabel("seconds since start", color=MUTED, fontsize=8)
        leg = ax.legend(fontsize=7.5, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                        loc="upper left", bbox_to_anchor=(0, 0.93))  # fmt: skip
        leg.get_frame().set_alpha(0.8)
    fig.suptitle(
        f"Anomaly pipeline: the dashboard's queries over a real run "
        f"({summary['records_sent']:,} records, {summary['duration_s']} s, one CPU worker, "
        f"local Kafka + Prometheus)",
        color=TEXT, fontsize=13, x=0.01, ha="left",
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, facecolor=BG)
    plt.close(fig)


def _last(results: dict[str, list[dict[str, Any]]], expr: str) -> float:
    series = results.get(expr) or []
    vals = [float(v[1]) for s in series for v in s["values"][-1:]]
    return max(vals) if vals else math.nan


def main(argv: list[str]) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    architecture(IMG / "architecture.png")
    print(f"wrote {IMG / 'architecture.png'}")
    if argv[1:2] == ["architecture"]:
        return
    with tempfile.TemporaryDirectory(prefix="figures-") as tmp:
        results, marks, summary = demo_run(Path(tmp))
    dashboard(results, marks, summary, IMG / "dashboard.png")
    print(f"wrote {IMG / 'dashboard.png'}")
    print(json.dumps(summary, indent=2))
    for expr in results:
        peak = max(
            (float(v[1]) for s in results[expr] for v in s["values"] if v[1] not in ("NaN",)),
            default=math.nan,
        )
        print(f"  peak {peak:12.4g}  last {_last(results, expr):12.4g}  {expr}")


if __name__ == "__main__":
    main(sys.argv)
