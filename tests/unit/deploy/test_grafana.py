"""deploy/grafana: the dashboard is well formed, its PromQL parses and names real metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.worker.metrics import PipelineMetrics
from tests.support.promql import exported_names, grafana_to_promql, recorded_names, referenced_names
from tests.support.tools import ROOT, require_tool

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "anomaly-pipeline.json"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def graph_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [grafana_to_promql(t["expr"]) for p in graph_panels() for t in p["targets"]]


def test_layout_ids_and_datasource():
    d = dashboard()
    assert d["uid"] == "anomaly-pipeline"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in graph_panels():
        assert p["description"], p["title"]
        assert p["targets"], p["title"]
        for t in [p, *p["targets"]]:
            uid = t["datasource"]["uid"]
            assert uid.startswith("${") and uid[2:-1] in variables, p["title"]


def test_panels_cover_what_an_operator_needs():
    used = referenced_names(dashboard_exprs())
    for name in [
        "pipeline_records_consumed_total",
        "pipeline_end_to_end_latency_seconds_bucket",
        "pipeline_batch_size_bucket",
        "pipeline_anomalies_total",
        "pipeline:expected_anomaly_ratio",
        "pipeline_consumer_lag",
        "pipeline_records_invalid_total",
        "pipeline_model_info",
        "pipeline_drift_psi",
    ]:
        assert name in used, f"no panel shows {name}"


def test_every_query_parses_and_names_exported_metrics(tmp_path: Path):
    exprs = dashboard_exprs()
    known = exported_names(PipelineMetrics().registry) | recorded_names()
    used = referenced_names(exprs)
    assert used <= known, f"panels use metrics nobody exports: {sorted(used - known)}"
    # promtool parses PromQL: wrap each query in a recording rule and check the file
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_provisioning_points_at_the_dashboards_and_prometheus():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/anomaly-pipeline.yml").read_text()
    )
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
