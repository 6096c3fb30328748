"""deploy/prometheus and deploy/grafana: the rules and the configuration pass promtool, each
alert fires when it should (promtool's rule tests), every dashboard query is valid PromQL
over metrics the code defines, and the compose profile mounts and wires them consistently.
That the running services expose every metric named is tests/integration/test_observability.py."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from prometheus_client import REGISTRY

from tests.support import REPO
from tests.support.observability import (
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS,
    dashboard_queries,
    dashboards,
    exposed_names,
    metrics_named,
    panels,
    promtool,
    rule_expressions,
)

STAGES = {"ingest", "worker", "sink", "billing"}
# Each service's metrics: importing these defines them in the default registry.
METRIC_MODULES = ("ingest.metrics", "processors.metrics", "sinks.metrics", "billing.metrics",
                  "meterstream.core.service", "meterstream.core.lag")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_rules_pass_promtool_check_rules() -> None:
    result = _run("check", "rules", str(PROMETHEUS / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_prometheus_configuration_passes_promtool_check_config() -> None:
    result = _run("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_fires_when_it_should_and_not_on_a_healthy_pipeline() -> None:
    result = _run("test", "rules", str(PROMETHEUS / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "rules_test.yml").read_text()))
    assert tested == {name for name, _ in rule_expressions()}, "an alert without a rule test"


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n"
                      "        expr: sum(rate(meterstream_x_total[5m]) > \n")
    assert _run("check", "rules", str(broken)).returncode != 0


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions only in rule files: each query becomes a recording rule.
    queries = dashboard_queries()
    assert len(queries) > 30
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_dashboards_and_rules_name_is_defined_in_the_code() -> None:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    defined = exposed_names(list(REGISTRY.collect()))
    named = metrics_named()
    assert {"meterstream_worker_consumer_lag", "meterstream_sink_consumer_lag",
            "meterstream_billing_invoice_runs_total"} <= set(named)
    assert {name: where for name, where in named.items() if name not in defined} == {}


def test_a_dashboard_per_stage_each_on_the_provisioned_data_source() -> None:
    boards = dashboards()
    assert set(boards) == STAGES
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                            .read_text())["datasources"][0]
    for name, board in boards.items():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(board):
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for item in (panel, *panel["targets"]):
                assert item["datasource"] == {"type": source["type"], "uid": source["uid"]}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def test_the_observability_profile_runs_prometheus_and_grafana_with_deploy_files() -> None:
    compose = _compose()
    services = compose["services"]
    profiled = {name for name, service in services.items() if "profiles" in service}
    assert profiled == {"prometheus", "grafana"}
    for name in profiled:
        assert services[name]["profiles"] == ["observability"]
        for target, source in _mounts(services[name]).items():
            assert (REPO / source).exists(), f"{name} mounts {source} at {target}: missing"
        for volume in services[name]["volumes"]:
            if not volume.startswith("./"):
                assert volume.split(":")[0] in compose["volumes"], f"{name}: {volume}"

    prometheus = services["prometheus"]
    assert _mounts(prometheus) == {"/etc/prometheus": "deploy/prometheus"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    grafana = services["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meterstream.yml")
                              .read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == str(DASHBOARDS.relative_to(REPO))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DASHBOARDS / Path(home).name).exists()
    # Read-only to whoever reaches it, and nobody logs in: no credential in the file.
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["environment"]["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert grafana["environment"]["GF_AUTH_BASIC_ENABLED"] == "false"

    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                            .read_text())["datasources"][0]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert f"{url.port}:{url.port}" in prometheus["ports"][0]


def test_prometheus_scrapes_every_meterstream_service_on_its_port() -> None:
    compose = _compose()
    services = compose["services"]
    env = compose["x-meterstream"]["environment"]
    ports = {"receiver": env["METERSTREAM_RECEIVER_PORT"],
             "worker": env["METERSTREAM_WORKER_PORT"], "sink": env["METERSTREAM_SINK_PORT"],
             "console": env["METERSTREAM_CONSOLE_PORT"]}
    # No METERSTREAM_METRICS_HOST: /metrics is on each service's own port.
    assert "METERSTREAM_METRICS_HOST" not in (REPO / "docker-compose.yml").read_text()
    running = {name for name, service in services.items()
               if service.get("command") in (["receiver"], ["worker"], ["sink"], ["console"])}
    assert running == set(ports)
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    scraped: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        targets = [t for static in job.get("static_configs", []) for t in static["targets"]]
        targets += [f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", [])
                    for name in dns["names"]]
        scraped[job["job_name"]] = set(targets)
    assert scraped == {f"meterstream-{name}": {f"{name}:{port}"} for name, port in ports.items()}
    assert config["rule_files"] == ["rules.yml"]
