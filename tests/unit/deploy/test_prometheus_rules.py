"""deploy/prometheus: promtool checks the config and rules and runs the rules' unit tests."""

from __future__ import annotations

import subprocess

from pipeline.worker.metrics import PipelineMetrics
from tests.support.promql import RULES, exported_names, recorded_names, referenced_names, rule_exprs
from tests.support.tools import ROOT, require_tool

PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    done = subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROMETHEUS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_config_and_rules_pass_promtool_check():
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_rule_unit_tests_pass():
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.test.yml"))
    assert tests
    out = promtool("test", "rules", *tests)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_has_a_runbook_section():
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    tested = "\n".join(p.read_text() for p in (PROMETHEUS / "tests").glob("*.test.yml"))
    operations = (ROOT / "docs" / "operations.md").read_text().lower()
    for name, rule in alerts.items():
        assert f"alertname: {name}" in tested, f"{name} has no promtool test"
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {anchor}" in operations, f"docs/operations.md has no section for {anchor}"


def test_rules_refer_only_to_exported_metrics():
    known = exported_names(PipelineMetrics().registry) | recorded_names()
    used = referenced_names(rule_exprs())
    assert used, "no metric names found in the rules"
    assert used <= known, f"rules use metrics nobody exports: {sorted(used - known)}"
