"""Hot reload follows the files however they are replaced, and never stops watching."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent_mcp_gateway.config import load
from agent_mcp_gateway.gateway import Gateway
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
