"""The shipped Grafana dashboard is importable and only queries metrics the gateway exports.

Every PromQL expression is parsed by Prometheus's own `promtool` (Debian package `prometheus`),
wrapped as a recording rule, with Grafana's template variables substituted. Metric names are
checked against app/agent_mcp_gateway/metrics.py the same way tests/test_prometheus_rules.py
checks the alerts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_mcp_gateway.observe import metrics

from conftest import ROOT

DASHBOARD = ROOT / "ops" / "grafana" / "agent-mcp-gateway.json"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)

# What Grafana puts in place of its variables, for checking the PromQL outside Grafana.
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "5m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$agent": ".*",
    "$server": ".*",
}

# Series that Prometheus itself adds to every scrape.
SCRAPE_SERIES = {"up"}

# What prometheus_client's ProcessCollector exposes on Linux; on other platforms it exposes
# nothing, so the registry alone cannot vouch for these there.
PROCESS_METRICS = {
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
}

SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}

# Metrics the dashboard is expected to chart.
REQUIRED_METRICS = {
    "up",
    "gateway_operations_total",
    "gateway_operation_duration_seconds_bucket",
    "gateway_downstream_up",
    "gateway_downstream_call_duration_seconds_bucket",
    "gateway_policy_decisions_total",
    "gateway_rate_limited_total",
    "gateway_active_sessions",
    "gateway_session_limit",
    "gateway_http_requests_total",
    "gateway_config_reloads_total",
    "gateway_config_last_reload_successful",
    "gateway_audit_write_failures_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(panel title + refId, PromQL) for every target of every panel."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in panels()
        for target in panel["targets"]
    ]


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: not functions, keywords, label names or values."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)  # range selectors
    stripped = GROUPING.sub(" ", stripped)  # by (...), on (...), ...
    return {name for name in IDENTIFIER.findall(stripped) if name.lower() not in PROMQL_KEYWORDS}


def exported_metrics() -> set[str]:
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in SUFFIXES.get(family.type, [""])
    }


def gateway_label_names() -> dict[str, set[str]]:
    """Sample name -> label names, for the gateway's own metrics in app/agent_mcp_gateway/metrics.py."""
    labels: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        name, kind = getattr(value, "_name", None), getattr(value, "_type", None)
        if isinstance(name, str) and isinstance(kind, str):
            for suffix in SUFFIXES.get(kind, [""]):
                labels[name + suffix] = set(value._labelnames)
    return labels


def test_dashboard_is_valid_importable_json() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["title"] and board["uid"]
    assert board.get("id") is None, "an exported id collides on import"
    inputs = {item["name"]: item for item in board["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_template_variables() -> None:
    variables = {var["name"]: var for var in dashboard()["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    for name in ("agent", "server"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        assert var["definition"] == f"label_values(gateway_operations_total, {name})"
        assert var["query"]["query"] == var["definition"]
        assert var["multi"] is True and var["includeAll"] is True
        # With "All", Grafana sends allValue; ".*" also matches series such as server="none".
        assert var["allValue"] == ".*"
        assert name in gateway_label_names()["gateway_operations_total"]


def test_every_panel_is_titled_described_and_queries_prometheus() -> None:
    assert panels(), "dashboard has no panels"
    for panel in panels():
        title = panel.get("title")
        assert title, f"panel {panel.get('id')} has no title"
        assert panel["type"] in {"timeseries", "stat"}, title
        assert panel.get("description"), f"{title}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), title
        targets = panel.get("targets") or []
        assert targets, f"{title}: no targets"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title}: target without expr"
            assert target["datasource"]["uid"] == "${datasource}", title
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refIds"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (operation, le) ("
        'rate(gateway_operation_duration_seconds_bucket{agent=~"$agent"}[$__rate_interval])))'
        ' / on (job) group_left max(up{job="x"}) > bool 0.1e3'
    )
    assert metric_names(expr) == {"gateway_operation_duration_seconds_bucket", "up"}


def test_dashboard_only_uses_metrics_the_gateway_exports() -> None:
    """A renamed metric in app/agent_mcp_gateway/metrics.py must not silently turn a panel into "No data"."""
    exported = exported_metrics()
    used: dict[str, str] = {}
    for where, expr in expressions():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for name in names:
            used.setdefault(name, where)
    unknown = {
        name: where
        for name, where in used.items()
        if name not in exported
        and name not in SCRAPE_SERIES
        and not (name.startswith("process_") and name in PROCESS_METRICS)
    }
    assert unknown == {}, "metrics not defined in app/agent_mcp_gateway/metrics.py"
    assert REQUIRED_METRICS - set(used) == set(), "metrics the dashboard should chart"


def test_agent_and_server_filters_where_the_metric_has_those_labels() -> None:
    labels = gateway_label_names()
    for where, expr in expressions():
        for name, matchers in SELECTOR.findall(expr):
            for label in ("agent", "server"):
                if label in labels.get(name, set()):
                    assert f'{label}=~"${label}"' in matchers, f"{where}: {name} not filtered by ${label}"


def test_shared_metric_names_are_scoped_to_the_gateway_job() -> None:
    """up and process_* also come from other targets (Prometheus scrapes itself)."""
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    for where, expr in expressions():
        for name, matchers in SELECTOR.findall(expr):
            if name in SCRAPE_SERIES or name.startswith("process_"):
                job = re.search(r'\bjob="([^"]*)"', matchers)
                assert job, f"{where}: {name} without a job matcher"
                assert job.group(1) == "agent-mcp-gateway" and job.group(1) in jobs, where


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    rules = [
        {"record": f"grafana:panel_expr:{index}", "expr": substitute(expr)}
        for index, (_, expr) in enumerate(expressions())
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "grafana-dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        output
        + "\n"
        + "\n".join(f"{index}: {where}: {expr}" for index, (where, expr) in enumerate(expressions()))
    )
    assert f"SUCCESS: {len(rules)} rules found" in output
