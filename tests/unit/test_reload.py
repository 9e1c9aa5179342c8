"""Hot reload follows the files however they are replaced, and never stops watching."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent_mcp_gateway import reload
from agent_mcp_gateway.config import load
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.audit import AuditRecord
from agent_mcp_gateway.reload import watch_config
from agent_mcp_gateway.settings import load_settings

from conftest import GatewayFiles, fixture_server, stdio_gateway

SERVERS = {"mcpServers": {"echo": fixture_server("echo")}}


def rules(*servers: str) -> dict[str, Any]:
    return {"agents": {"reader": {"allow": {"servers": list(servers)}}}}


def configmap(root: Path, name: str, content: dict[str, Any], generation: str) -> None:
    """Lay out a Kubernetes ConfigMap volume: `name` -> `..data/name`, `..data` -> a generation
    folder; a new generation is swapped in by renaming a fresh `..data` symlink over the old."""
    folder = root / generation
    folder.mkdir()
    (folder / name).write_text(json.dumps(content))
    temporary = root / "..data_tmp"
    temporary.symlink_to(generation)
    os.replace(temporary, root / "..data")
    link = root / name
    if not link.is_symlink():
        link.symlink_to(Path("..data") / name)


async def visible(client: Any) -> list[str]:
    result = await client.call_tool_mcp("list_servers", {"agent_id": "reader"})
    return [server["name"] for server in result.structured_content["servers"]]


async def test_configmap_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    mounted = tmp_path / "config"
    mounted.mkdir()
    (mounted / ".mcp.json").write_text(json.dumps(SERVERS))
    configmap(mounted, "rules.json", rules("echo"), "..2026_11_30_a")
    files = GatewayFiles(mounted, mounted / ".mcp.json", mounted / "rules.json", tmp_path / "audit.jsonl")

    async with stdio_gateway(files) as client:
        assert await visible(client) == ["echo"]
        configmap(mounted, "rules.json", rules("nothing"), "..2026_11_30_b")
        for _ in range(100):
            if await visible(client) == []:
                break
            await asyncio.sleep(0.1)
        assert await visible(client) == [], "the revoked agent kept its access"
        configmap(mounted, "rules.json", rules("echo"), "..2026_11_30_c")
        for _ in range(100):
            if await visible(client) == ["echo"]:
                break
            await asyncio.sleep(0.1)
        assert await visible(client) == ["echo"]


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
    try:
        await asyncio.sleep(0.5)
        for generation in range(1, 4):
            rules_path.write_text(json.dumps(rules(*(f"s{n}" for n in range(generation)))))
            for _ in range(50):
                if len(calls) >= generation:
                    break
                await asyncio.sleep(0.1)
        assert len(calls) >= 2, calls  # the second change was seen after the first reload raised
        assert not watcher.done()
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
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
    try:
        await asyncio.sleep(0.5)
        started = len(looked)
        for n in range(40):
            gateway.audit.write(
                AuditRecord("reader", "list_servers", None, None, "ALLOW", "r", None, 1.0, None, f"r{n}")
            )
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert list(tmp_path.glob("audit.jsonl.*")), "the audit log did not rotate"
        assert len(looked) == started, "audit writes woke the configuration watcher"
        before = gateway.engine.agent_ids
        rules_path.write_text(json.dumps({"agents": {"writer": {"allow": {"servers": ["*"]}}}}))
        for _ in range(50):
            if gateway.engine.agent_ids != before:
                break
            await asyncio.sleep(0.1)
        assert gateway.engine.agent_ids == ["writer"]
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
        gateway.audit.close()
