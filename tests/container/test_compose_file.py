"""compose.yaml is hardened, wired to files that exist, and its gateway configuration loads.

Static checks (no container engine needed); the image itself is exercised by
ops/smoke-test-image.sh and the container tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent_mcp_gateway import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def volume_sources(service: dict) -> dict[str, str]:
    """Container path -> host source for the service's volumes (a `${VAR:-default}` as its default)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", spec).split(":")
        out[target] = source
    return out


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_is_hardened(name: str) -> None:
    service = SERVICES[name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
    assert service["restart"] == "unless-stopped"
    test = service["healthcheck"]["test"]
    # podman-compose 1.0 mangles the exec form; CMD-SHELL works with it and with docker compose.
    # A replicated service takes the string form (the same shell command): podman-compose 1.0
    # consumes a list in place, which breaks every replica after the first.
    if service.get("deploy", {}).get("replicas", 1) > 1:
        assert isinstance(test, str) and test
    else:
        assert test[0] == "CMD-SHELL" and len(test) == 2
    for port in service.get("ports", []):
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_bind_mounts_exist() -> None:
    for service in SERVICES.values():
        for source in volume_sources(service).values():
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_gateway_service_matches_the_image() -> None:
    gateway = SERVICES["gateway"]
    assert gateway["build"]["dockerfile"] == "Containerfile"
    env = gateway["environment"]
    assert env["GATEWAY_TRANSPORT"] == "http"
    assert env["GATEWAY_HTTP_PORT"] == "8000"
    mounts = volume_sources(gateway)
    assert mounts["/config"] == "./ops/compose/config"
    assert any(spec.endswith(":/config:ro") for spec in gateway["volumes"])
    assert "GATEWAY_CONFIG_DIR" in gateway["volumes"][0]  # tests give their own configuration
    assert "/var/lib/agent-mcp-gateway" in mounts
    assert gateway["depends_on"]["demo-server"]["condition"] == "service_healthy"


def test_prometheus_service_reads_the_shipped_rules() -> None:
    prometheus = SERVICES["prometheus"]
    assert volume_sources(prometheus)["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["image"].startswith("${PROMETHEUS_IMAGE:-")


def test_compose_gateway_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    # ops/compose-env.sh writes these into ops/compose/gateway.env, which the service reads.
    monkeypatch.setenv("RESEARCHER_TOKEN_SHA256", "sha256:" + "a" * 64)
    monkeypatch.setenv("BACKEND_TOKEN_SHA256", "sha256:" + "b" * 64)
    assert SERVICES["gateway"]["env_file"] == ["ops/compose/gateway.env"]
    cfg = config.load(
        ROOT / "ops/compose/config/.mcp.json", ROOT / "ops/compose/config/.mcp-gateway-rules.json"
    )
    assert set(cfg.servers) == {"demo", "time"}
    assert cfg.rules.credentials_configured  # the stack binds 0.0.0.0 inside its network
    demo_url = cfg.servers["demo"].url
    assert demo_url == "http://demo-server:9000/mcp"


def test_scale_profile_adds_replicas_behind_haproxy_and_redis() -> None:
    """The default services carry no profile; the scale profile adds the fleet around them."""
    profiles = {name: service.get("profiles") for name, service in SERVICES.items()}
    assert {name for name, p in profiles.items() if p is None} == {"gateway", "demo-server", "prometheus"}
    assert {name for name, p in profiles.items() if p == ["scale"]} == {"gateway-replica", "haproxy", "redis"}
    replica = SERVICES["gateway-replica"]
    assert replica["deploy"]["replicas"] == 3
    assert replica["environment"]["GATEWAY_RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
    assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in replica and "ports" not in SERVICES["redis"]  # only HAProxy is published
    # Each replica its own audit log: no named volume shared by the three.
    assert set(volume_sources(replica)) == {"/config"}
    assert (
        volume_sources(SERVICES["haproxy"])["/usr/local/etc/haproxy/haproxy.cfg"]
        == "./ops/compose/haproxy.cfg"
    )
    haproxy_cfg = (ROOT / "ops/compose/haproxy.cfg").read_text()
    assert "server-template gw 3 gateway-replica:8000" in haproxy_cfg
    assert "stick match req.hdr(mcp-session-id)" in haproxy_cfg
    assert "stick store-response res.hdr(mcp-session-id)" in haproxy_cfg
