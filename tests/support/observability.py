"""deploy/'s Prometheus and Grafana files as the tests read them: the queries of the
dashboards, the expressions of the alert rules, the meterstream metrics they name."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
# Grafana's variables, as Prometheus would see them once Grafana filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_METRIC = re.compile(r"\bmeterstream_[a-z0-9_]+\b")


def dashboards() -> dict[str, dict[str, Any]]:
    """deploy/grafana/dashboards/*.json by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL with Grafana's variables filled in) for every target of every panel."""
    queries = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append((f"{name}.json: {panel['title']}", expr))
    return queries


def rule_expressions() -> list[tuple[str, str]]:
    """(alert name, expression) of every rule in deploy/prometheus/rules.yml."""
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [(rule.get("alert") or rule["record"], rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def metrics_named() -> dict[str, list[str]]:
    """Every meterstream metric the dashboards and the rules name -> where."""
    named: dict[str, list[str]] = {}
    for where, expr in [*dashboard_queries(), *rule_expressions()]:
        for name in _METRIC.findall(expr):
            named.setdefault(name, []).append(where)
    return named


def exposed_names(families: list[Any]) -> set[str]:
    """The series names a /metrics page makes available to queries, from its parsed
    families (prometheus_client.parser): each sample's name, and for a family without
    samples yet (a labelled metric no label set was used of) the names it will have."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",)}
    names: set[str] = set()
    for family in families:
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def promtool() -> str:
    """The promtool executable. CI installs it (deploy/system-packages.sh): there its absence
    fails the test; elsewhere the test is skipped saying so."""
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing; CI installs it with deploy/system-packages.sh")
        pytest.skip("promtool is not installed (Debian package `prometheus`; "
                    "deploy/system-packages.sh installs it)")
    return found
