"""Hot reload follows the files however they are replaced, and never stops watching. A stdio
gateway following a ConfigMap's symlink swap is in tests/process/test_reload_configmap.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from agent_mcp_gateway import reload
from agent_mcp_gateway.config import load
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.audit import AuditRecord
from agent_mcp_gateway.reload import watch_config
from agent_mcp_gateway.settings import load_settings

from conftest import (
    STARTUP_SECONDS,
    GatewayFiles,
    eventually,
    fixture_server,
    memory_gateway,
    metric,
)

SERVERS = {"mcpServers": {"echo": fixture_server("echo")}}


def rules(*servers: str) -> dict[str, Any]:
    return {"agents": {"reader": {"allow": {"servers": list(servers)}}}}


async def changed_until(done: Callable[[], bool], change: Callable[[int], None], what: str) -> None:
    """Change the files until `done`: the watcher may still be starting when the first change
    lands (it stamps the files, then starts watching), so a change is made again rather than
    the test sleeping for a start-up time a loaded machine can exceed."""
    started = time.monotonic()
    attempt = 0
    while not done():
        if time.monotonic() - started > STARTUP_SECONDS:
            raise AssertionError(f"{what}: not seen within {STARTUP_SECONDS:.0f} s of changes")
        change(attempt)
        attempt += 1
        settle = time.monotonic() + 2  # seen within 2 s when the watcher runs, else change again
        while not done() and time.monotonic() < settle:
            await asyncio.sleep(0.05)


async def test_watcher_survives_a_failing_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers, rules_path = tmp_path / ".mcp.json", tmp_path / "rules.json"
    servers.write_text(json.dumps({"mcpServers": {}}))
    rules_path.write_text(json.dumps(rules()))
    gateway = Gateway(
        load(servers, rules_path), load_settings({"GATEWAY_AUDIT_LOG": str(tmp_path / "a.jsonl")})
    )
    calls: list[str] = []

    async def flaky_reload(source: str) -> bool:
        calls.append(source)
        if len(calls) == 1:
            raise RuntimeError("unexpected")
        return True

    monkeypatch.setattr(gateway, "reload", flaky_reload)
    monkeypatch.setattr("agent_mcp_gateway.reload.RETRY_SECONDS", 0.05)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_config(gateway, stop))

    def change(attempt: int) -> None:
        rules_path.write_text(json.dumps(rules(*(f"s{n}" for n in range(attempt + len(calls) + 1)))))

    try:
        await changed_until(lambda: len(calls) >= 1, change, "the first change")  # its reload raises
        await changed_until(lambda: len(calls) >= 2, change, "a change after the failed reload")
        assert not watcher.done()
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
        gateway.audit.close()


async def test_audit_writes_beside_the_config_do_not_wake_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit log in the configuration's folder writes a line per call (and rotates); the
    watcher looks at none of that, and still reloads on a configuration change."""
    servers, rules_path = tmp_path / ".mcp.json", tmp_path / "rules.json"
    servers.write_text(json.dumps({"mcpServers": {}}))
    rules_path.write_text(json.dumps(rules()))
    settings = load_settings(
        {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "GATEWAY_AUDIT_MAX_BYTES": "2000"}
    )
    gateway = Gateway(load(servers, rules_path), settings)
    looked: list[int] = []
    real_stamp = reload._stamp

    def counting_stamp(paths: tuple[Path, ...]) -> Any:
        looked.append(1)
        return real_stamp(paths)

    monkeypatch.setattr(reload, "_stamp", counting_stamp)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_config(gateway, stop))

    def agents(*names: str) -> Callable[[int], None]:
        def change(attempt: int) -> None:
            agents = {name: {"allow": {"servers": ["*"]}} for name in names}
            rules_path.write_text(json.dumps({"agents": agents}, indent=attempt))

        return change

    try:
        # Watching for sure (a reload seen) before counting what wakes the watcher.
        await changed_until(lambda: gateway.engine.agent_ids == ["primer"], agents("primer"), "priming")
        await asyncio.sleep(0.5)  # the priming change's own events, settled
        started = len(looked)
        for n in range(40):
            gateway.audit.write(
                AuditRecord("reader", "list_servers", None, None, "ALLOW", "r", None, 1.0, None, f"r{n}")
            )
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert list(tmp_path.glob("audit.jsonl.*")), "the audit log did not rotate"
        assert len(looked) == started, "audit writes woke the configuration watcher"
        await changed_until(lambda: gateway.engine.agent_ids == ["writer"], agents("writer"), "a change")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
        gateway.audit.close()


async def test_a_call_keeps_the_configuration_it_started_under(gateway_files: GatewayFiles) -> None:
    """A reload while a call is in flight changes the next call, not this one: its identity,
    policy decision, metrics and audit line all come from the snapshot taken when it started."""
    gateway_files.write_servers({"slow": fixture_server("slow")})
    gateway_files.write_rules({"agents": {"reader": {"allow": {"servers": ["slow"]}}}})
    async with memory_gateway(gateway_files) as served:
        before = metric(
            "gateway_operations_total",
            operation="execute_tool",
            agent="reader",
            server="slow",
            outcome="ALLOW",
        )
        async with served.client() as client:
            call = asyncio.create_task(
                client.call_tool_mcp(
                    "execute_tool",
                    {"agent_id": "reader", "server": "slow", "tool": "sleep", "args": {"seconds": 1.5}},
                )
            )
            await asyncio.sleep(0.5)  # the call is at the downstream now
            gateway_files.write_rules({"agents": {"writer": {"allow": {"servers": ["other-*", "slow"]}}}})
            assert await served.gateway.reload("test")
            result = await call
            assert not result.is_error, result
            with pytest.raises(MCPError) as refused:  # the next call runs under the new rules
                await client.call_tool_mcp("list_servers", {"agent_id": "reader"})
            assert "'reader' is not configured" in refused.value.message

    after = metric(
        "gateway_operations_total", operation="execute_tool", agent="reader", server="slow", outcome="ALLOW"
    )
    assert after == before + 1, "the call was counted under the configuration that replaced its own"
    lines = await eventually(
        lambda: [line for line in gateway_files.audit_lines() if line["operation"] == "execute_tool"]
    )
    assert [(line["agent_id"], line["decision"], line["rule"]) for line in lines] == [
        ("reader", "ALLOW", "agents.reader.allow.servers[0]")
    ]
