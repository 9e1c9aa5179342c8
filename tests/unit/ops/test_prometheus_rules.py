"""The shipped Prometheus configuration and alert rules are valid, and every alert is unit-tested.

Runs Prometheus's own `promtool` (Debian package `prometheus`). The alert tests live in
prometheus/tests/alerts_test.yml; these tests also check that they cover every alert and every
metric name the rules use exists in app/agent_mcp_gateway/metrics.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent_mcp_gateway.observe import metrics

from conftest import ROOT

PROM_DIR = ROOT / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERT_TESTS = PROM_DIR / "tests" / "alerts_test.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)

REQUIRED_ALERTS = {
    "GatewayDown",
    "DownstreamServerDown",
    "GatewayErrorRatioHigh",
    "GatewayLatencyP95High",
    "GatewayRateLimiting",
    "ConfigReloadFailed",
    "SessionsNearCap",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    # check config also loads rule_files, resolved relative to prometheus.yml.
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_required_alerts_exist_and_are_labelled() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has at least one test case expecting it and one expecting silence."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_rules_only_use_metrics_the_gateway_exports() -> None:
    """A renamed metric in app/agent_mcp_gateway/metrics.py must not silently turn an alert into a no-op."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    exported = {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    used = {name for rule in alert_rules() for name in re.findall(r"\b(gateway_[a-z_]+)\b", rule["expr"])}
    assert used, "no gateway metrics found in the rules"
    assert used - exported == set()


def test_scrape_config_targets_the_gateway() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway = jobs["agent-mcp-gateway"]
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    # Every address of compose's `gateway` and of the scale profile's `gateway-replica`.
    assert gateway["dns_sd_configs"] == [
        {"names": ["gateway", "gateway-replica"], "type": "A", "port": 8000, "refresh_interval": "10s"}
    ]
    assert config["rule_files"] == ["alerts.yml"]
