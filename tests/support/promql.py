"""Metric names: what a worker exports, and what PromQL in rules and dashboards refers to."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from tests.support.tools import ROOT

RULES = ROOT / "deploy" / "prometheus" / "rules" / "anomaly-pipeline.rules.yml"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
# identifiers that start a metric name; label names and functions do not start with these
_NAME = re.compile(r"\b(pipeline(?:_|:)[a-zA-Z0-9_:]+)")


def grafana_to_promql(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard query as Prometheus sees it once Grafana has filled in its variables."""
    return expr.replace("$__rate_interval", rate_interval)


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can export: samples seen so far plus, for each family,
    the names its type produces (a labelled counter has no sample before its first use)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def recorded_names(rules_file: Path = RULES) -> set[str]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}


def rule_exprs(rules_file: Path = RULES) -> list[str]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return [str(rule["expr"]) for g in groups for rule in g["rules"]]


def referenced_names(exprs: Iterable[str]) -> set[str]:
    """Metric names (ours: pipeline_* and recording rules pipeline:*) used in PromQL."""
    return {m for expr in exprs for m in _NAME.findall(expr)}
