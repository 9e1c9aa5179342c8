"""A stdio gateway process follows a Kubernetes ConfigMap's symlink swap of its rules."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from conftest import STARTUP_SECONDS, GatewayFiles, fixture_server, stdio_gateway

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


async def seen(client: Any, servers: list[str]) -> bool:
    """Whether the gateway comes to show `servers` (reloads take well under a second when idle;
    the bound is for a loaded machine)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if await visible(client) == servers:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_configmap_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    mounted = tmp_path / "config"
    mounted.mkdir()
    (mounted / ".mcp.json").write_text(json.dumps(SERVERS))
    configmap(mounted, "rules.json", rules("echo"), "..2026_11_30_a")
    files = GatewayFiles(mounted, mounted / ".mcp.json", mounted / "rules.json", tmp_path / "audit.jsonl")

    async with stdio_gateway(files) as client:
        assert await visible(client) == ["echo"]
        configmap(mounted, "rules.json", rules("nothing"), "..2026_11_30_b")
        assert await seen(client, []), "the revoked agent kept its access"
        configmap(mounted, "rules.json", rules("echo"), "..2026_11_30_c")
        assert await seen(client, ["echo"]), "the restored rules were not picked up"
