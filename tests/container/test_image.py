"""The gateway image, run hardened as in production, tested from the host through its mapped port.

The stack (demo MCP server over HTTP, gateway, later Prometheus) is shared by every test here; see
conftest.py. Calls reach the HTTP downstream in its own container and `mcp-server-time` over
stdio inside the gateway container.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ALLOWED_ORIGIN, GATEWAY_UID, STATE_DIR, TOKENS, Stack, exec_in, report

pytestmark = pytest.mark.container

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def bearer(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[agent]}"}


def client(stack: Stack, agent: str) -> Client:
    """An MCP client acting as `agent`, by its API token."""
    return Client(StreamableHttpTransport(stack.mcp_url, headers=bearer(agent)), timeout=30)


async def call(c: Client, gateway_tool: str, /, **arguments: Any) -> Any:
    result = await c.call_tool_mcp(gateway_tool, arguments)
    assert not result.is_error, result.content
    return result


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def operations(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], **labels: str) -> float:
    """Sum of gateway_operations_total over the samples matching `labels`."""
    return sum(
        value
        for (name, sample_labels), value in samples.items()
        if name == "gateway_operations_total" and labels.items() <= dict(sample_labels).items()
    )


def test_image_size_and_startup_time(stack: Stack) -> None:
    image = stack.engine.images.get(stack.image)
    size = image.attrs["Size"]
    report(f"image {stack.image}: {size / 1e6:.0f} MB ({size} bytes)")
    report(f"gateway container start -> /ready 200: {stack.ready_seconds:.2f} s")
    assert stack.ready_seconds < 90
    assert size < 1_000_000_000


def test_ready_reports_both_servers_up(stack: Stack) -> None:
    ready = httpx.get(f"{stack.base_url}/ready", timeout=5)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["servers"]["demo"]["state"] == "up", body
    assert body["servers"]["time"]["state"] == "up", body


def test_health(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/health", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["service"] == "agent-mcp-gateway"
    assert body["uptime_seconds"] > 0 and body["version"]


async def test_discovery_and_calls_through_the_mapped_port(stack: Stack) -> None:
    async with client(stack, "backend") as c, client(stack, "researcher") as r:
        names = {tool.name for tool in await c.list_tools()}
        assert {"list_servers", "get_server_tools", "execute_tool"} <= names

        servers = (
            await call(c, "list_servers", agent_id="backend", include_metadata=True)
        ).structured_content
        by_name = {server["name"]: server for server in servers["servers"]}
        assert set(by_name) == {"demo", "time"}
        assert by_name["demo"]["transport"] == "http" and by_name["time"]["transport"] == "stdio"

        demo_tools = (await call(c, "get_server_tools", agent_id="backend", server="demo")).structured_content
        # Denied tools are not even listed: backend's deny.tools hides delete_everything.
        assert {t["name"] for t in demo_tools["tools"]} == {"echo", "add", "sleep", "register_tool", "ask"}
        researcher_tools = (
            await call(r, "get_server_tools", agent_id="researcher", server="demo")
        ).structured_content
        assert {t["name"] for t in researcher_tools["tools"]} == {"echo", "add"}
        time_tools = (await call(c, "get_server_tools", agent_id="backend", server="time")).structured_content
        assert {t["name"] for t in time_tools["tools"]} == {"get_current_time", "convert_time"}

        # Streamable HTTP downstream in its own container.
        echoed = await call(
            r,
            "execute_tool",
            agent_id="researcher",
            server="demo",
            tool="echo",
            args={"message": "through podman"},
        )
        assert echoed.content[0].text == "through podman"
        added = await call(
            c, "execute_tool", agent_id="backend", server="demo", tool="add", args={"a": 2, "b": 3}
        )
        assert added.structured_content == {"result": 5.0}

        # stdio downstream: mcp-server-time, a child process inside the read-only gateway container.
        now = await call(
            c,
            "execute_tool",
            agent_id="backend",
            server="time",
            tool="get_current_time",
            args={"timezone": "UTC"},
        )
        assert json.loads(now.content[0].text)["timezone"] == "UTC"


async def test_policy_denial_names_the_rule(stack: Stack) -> None:
    async with client(stack, "backend") as c:
        with pytest.raises(MCPError) as denied:
            await c.call_tool_mcp(
                "execute_tool",
                {"agent_id": "backend", "server": "demo", "tool": "delete_everything", "args": {}},
            )
    assert denied.value.code == -32000
    data = denied.value.data
    assert data["code"] == "DENIED_BY_POLICY"
    assert data["rule"] == "agents.backend.deny.tools.demo[0]"
    assert (data["agent_id"], data["server"], data["tool"]) == ("backend", "demo", "delete_everything")

    lines = [line for line in stack.audit_lines() if line["tool"] == "delete_everything"]
    assert (
        lines and lines[-1]["decision"] == "DENY" and lines[-1]["rule"] == "agents.backend.deny.tools.demo[0]"
    )


async def test_the_image_requires_a_token(stack: Stack) -> None:
    """The image binds 0.0.0.0: no token, no service; a token acts as its own agent only."""
    headers = {"Accept": "application/json, text/event-stream"}
    for extra in ({}, {"Authorization": "Bearer not-a-token"}):
        refused = httpx.post(stack.mcp_url, json=INIT, headers={**headers, **extra}, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer ")
    assert stack.ready_body["auth"] == {"credentials_required": True}
    async with client(stack, "researcher") as c:
        with pytest.raises(MCPError) as claimed:
            await c.call_tool_mcp("list_servers", {"agent_id": "backend"})
        assert claimed.value.code == -32003
        mine = await call(c, "list_servers")
        assert {server["name"] for server in mine.structured_content["servers"]} == {"demo", "time"}


def test_origin_check(stack: Stack) -> None:
    headers = {"Accept": "application/json, text/event-stream", **bearer("researcher")}
    allowed = httpx.post(stack.mcp_url, json=INIT, headers={**headers, "Origin": ALLOWED_ORIGIN}, timeout=10)
    assert allowed.status_code == 200
    foreign = httpx.post(
        stack.mcp_url, json=INIT, headers={**headers, "Origin": "https://evil.example"}, timeout=10
    )
    assert foreign.status_code == 403


async def test_metrics_show_the_calls(stack: Stack) -> None:
    before = metric_samples(httpx.get(f"{stack.base_url}/metrics", timeout=5).text)
    async with client(stack, "researcher") as c:
        for _ in range(2):
            await call(
                c, "execute_tool", agent_id="researcher", server="demo", tool="echo", args={"message": "m"}
            )
        await call(
            c,
            "execute_tool",
            agent_id="researcher",
            server="time",
            tool="get_current_time",
            args={"timezone": "Europe/Paris"},
        )
        with pytest.raises(MCPError):
            await c.call_tool_mcp(
                "execute_tool", {"agent_id": "researcher", "server": "demo", "tool": "sleep"}
            )

    response = httpx.get(f"{stack.base_url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = metric_samples(response.text)

    def delta(**labels: str) -> float:
        return operations(after, **labels) - operations(before, **labels)

    common = {"operation": "execute_tool", "agent": "researcher"}
    assert delta(**common, server="demo", outcome="ALLOW") == 2
    assert delta(**common, server="time", outcome="ALLOW") == 1
    assert delta(**common, server="demo", outcome="DENY") == 1
    assert after[("gateway_downstream_up", (("server", "demo"),))] == 1
    assert after[("gateway_downstream_up", (("server", "time"),))] == 1
    assert any(name == "gateway_build_info" for name, _ in after)
    assert sum(v for (name, _), v in after.items() if name == "gateway_http_requests_total") > 0


def test_runs_as_non_root_with_no_privileges(stack: Stack) -> None:
    code, out = exec_in(stack.gateway, "id", "-u")
    assert (code, out.strip()) == (0, str(GATEWAY_UID))

    host_config = stack.gateway.get_wrapped_container().attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert any("no-new-privileges" in opt for opt in host_config.get("SecurityOpt") or [])

    # The gateway process itself (not just an exec'd shell): its uid, capabilities and no_new_privs.
    probe = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if any(part.endswith(b'agent-mcp-gateway') for part in cmd[:2]):\n"
        "        lines = open(f'/proc/{pid}/status').read().splitlines()\n"
        "        status = dict(line.split(':\\t', 1) for line in lines if ':\\t' in line)\n"
        "        print(status['Uid'].split()[0], status['CapEff'].strip(), status['CapBnd'].strip(),"
        " status['NoNewPrivs'].strip())\n"
        "        break\n"
    )
    code, out = exec_in(stack.gateway, "python3", "-c", probe)
    assert code == 0 and out.strip(), out
    uid, cap_eff, cap_bnd, no_new_privs = out.split()
    assert uid == str(GATEWAY_UID)
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
    assert no_new_privs == "1"


async def test_read_only_root_filesystem_and_still_working(stack: Stack) -> None:
    for path in ("/probe", "/opt/venv/probe", "/config/probe", "/etc/probe"):
        code, out = exec_in(stack.gateway, "sh", "-c", f"echo x > {path}")
        assert code != 0, f"{path} is writable"
        assert "Read-only file system" in out, out
    # The writable places: the /tmp tmpfs and the state volume.
    assert exec_in(stack.gateway, "sh", "-c", "cd /tmp && echo x > probe && rm probe")[0] == 0
    assert exec_in(stack.gateway, "sh", "-c", f"echo x > {STATE_DIR}/probe && rm {STATE_DIR}/probe")[0] == 0

    async with client(stack, "researcher") as c:
        now = await call(
            c,
            "execute_tool",
            agent_id="researcher",
            server="time",
            tool="get_current_time",
            args={"timezone": "UTC"},
        )
        assert "UTC" in now.content[0].text
        echoed = await call(
            c,
            "execute_tool",
            agent_id="researcher",
            server="demo",
            tool="echo",
            args={"message": "still here"},
        )
        assert echoed.content[0].text == "still here"
    assert httpx.get(f"{stack.base_url}/ready", timeout=5).status_code == 200


def test_image_healthcheck_passes(stack: Stack) -> None:
    """The image's own HEALTHCHECK, run by hand (podman runs its timer only through systemd)."""
    test = stack.gateway.get_wrapped_container().attrs["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    code, out = exec_in(stack.gateway, *test[1:])
    assert code == 0, out


async def test_audit_log_is_written_to_the_state_volume(stack: Stack) -> None:
    async with client(stack, "backend") as c:
        await call(
            c, "execute_tool", agent_id="backend", server="demo", tool="echo", args={"message": "audited"}
        )

    mounts = {m["Destination"]: m for m in stack.gateway.get_wrapped_container().attrs["Mounts"]}
    assert mounts[STATE_DIR]["Type"] == "volume" and mounts[STATE_DIR]["Name"] == stack.volume
    assert mounts["/config"]["RW"] is False

    lines = stack.audit_lines()
    fields = {
        "timestamp",
        "agent_id",
        "operation",
        "server",
        "tool",
        "decision",
        "rule",
        "error_code",
        "latency_ms",
        "session_id",
        "request_id",
    }
    assert all(fields <= set(line) for line in lines)
    echo = [line for line in lines if line["tool"] == "echo" and line["agent_id"] == "backend"]
    assert echo and echo[-1]["decision"] == "ALLOW" and echo[-1]["rule"] == "agents.backend.allow.servers[0]"
    assert any(line["server"] == "time" and line["decision"] == "ALLOW" for line in lines)
    assert any(line["decision"] == "DENY" for line in lines)
    code, owner = exec_in(stack.gateway, "stat", "-c", "%u", f"{STATE_DIR}/audit.jsonl")
    assert (code, owner.strip()) == (0, str(GATEWAY_UID))


async def test_prometheus_scrapes_the_gateway(stack: Stack, prometheus: str) -> None:
    async with client(stack, "backend") as c:
        await call(
            c,
            "execute_tool",
            agent_id="backend",
            server="time",
            tool="get_current_time",
            args={"timezone": "UTC"},
        )

    started = time.monotonic()
    target: dict[str, Any] = {}
    value = 0.0
    with httpx.Client(base_url=prometheus, timeout=5) as api:
        while time.monotonic() - started < 60:
            targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            target = next((t for t in targets if t["labels"]["job"] == "agent-mcp-gateway"), {})
            query = 'sum(gateway_operations_total{operation="execute_tool",outcome="ALLOW"})'
            result = api.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
            value = float(result[0]["value"][1]) if result else 0.0
            if target.get("health") == "up" and value > 0:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert target.get("health") == "up", target
        assert target["scrapeUrl"] == "http://gateway:8000/metrics"
        assert value > 0
        report(f"Prometheus: target up and gateway_operations_total > 0 after {elapsed:.1f} s")

        up = api.get("/api/v1/query", params={"query": 'up{job="agent-mcp-gateway"}'}).json()["data"][
            "result"
        ]
        assert up and up[0]["value"][1] == "1"
        requests = api.get("/api/v1/query", params={"query": "sum(gateway_http_requests_total)"}).json()
        assert float(requests["data"]["result"][0]["value"][1]) > 0
        downstream = api.get("/api/v1/query", params={"query": "gateway_downstream_up"}).json()["data"][
            "result"
        ]
        assert {r["metric"]["server"]: r["value"][1] for r in downstream} == {"demo": "1", "time": "1"}

        # The repository's alert rules loaded into a real Prometheus; none firing on a healthy stack.
        groups = api.get("/api/v1/rules").json()["data"]["groups"]
        alerts = {
            rule["name"]: rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"
        }
        assert {"GatewayDown", "DownstreamServerDown", "ConfigReloadFailed"} <= set(alerts)
        assert all(rule["state"] != "firing" for rule in alerts.values()), {
            name: rule["state"] for name, rule in alerts.items()
        }
