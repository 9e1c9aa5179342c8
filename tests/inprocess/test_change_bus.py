"""Changes across replicas: two gateways sharing a Redis (as the scale profile's replicas do)
and one HTTP downstream; a tool added through one is heard by a 2026-07-28 client listening on
the other, and a single gateway without Redis keeps working alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.subscriptions import listen
from mcp.shared.subscriptions import ServerEvent, ToolsListChanged

from agent_mcp_gateway.sessions.bus import TIMEOUT_SECONDS, ChangeBus

from conftest import GatewayFiles, asgi_gateway, eventually, served_over_http
from inprocess.test_rate_limit_storage import RedisServer, running_redis

RULES: dict[str, Any] = {"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["*"]}}}}
EVENT_SECONDS = 60
QUIET_SECONDS = TIMEOUT_SECONDS * 2.5  # longer than a read timeout would let a subscriber wait


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path)


async def test_a_change_through_one_replica_reaches_listeners_on_another(
    gateway_files: GatewayFiles, redis_server: RedisServer
) -> None:
    with served_over_http("list_changing") as url:
        gateway_files.write_servers({"changing": {"description": "tools come and go", "url": url}})
        gateway_files.write_rules(RULES)
        shared = {"GATEWAY_RATE_LIMIT_STORAGE": redis_server.url}
        async with asgi_gateway(gateway_files, **shared) as one, asgi_gateway(gateway_files, **shared) as two:
            for replica in (one, two):
                await eventually(lambda r=replica: r.gateway.ready, 30)  # type: ignore[misc]
                await asyncio.wait_for(replica.gateway.bus.connected.wait(), EVENT_SECONDS)
            agent = {"X-Agent-Id": "ide"}
            async with (
                one.client("auto", headers=agent) as caller,
                two.client("auto", headers=agent) as listener,
            ):
                heard: list[ServerEvent] = []
                async with listen(listener.session, tools_list_changed=True) as stream:

                    async def collect() -> None:
                        async for event in stream:
                            heard.append(event)

                    collecting = asyncio.create_task(collect())
                    await caller.call_tool("changing__add_tool", {"name": "fresh"})
                    await eventually(lambda: heard, timeout=EVENT_SECONDS)
                    collecting.cancel()
                assert heard == [ToolsListChanged()]
                assert "changing__fresh" in {tool.name for tool in await listener.list_tools()}


async def test_a_quiet_bus_stays_subscribed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription with nothing to say for longer than a read timeout stays up (no warning,
    no reconnect) and still carries the next change."""
    caplog.set_level(logging.INFO, logger="agent_mcp_gateway")
    refreshed: list[tuple[str, str]] = []

    async def updated(server: str, uri: str, owner: str) -> None:
        return None

    hearing = ChangeBus(redis_server.url, lambda server, kind: refreshed.append((server, kind)), updated)
    telling = ChangeBus(redis_server.url, lambda server, kind: None, updated)
    await hearing.start()
    await telling.start()
    try:
        for bus in (hearing, telling):
            await asyncio.wait_for(bus.connected.wait(), EVENT_SECONDS)
        await asyncio.sleep(QUIET_SECONDS)
        telling.catalog_changed("changing", "tools")
        await eventually(lambda: refreshed, timeout=EVENT_SECONDS)
        assert refreshed == [("changing", "tools")]
        assert not [record for record in caplog.records if "change bus" in record.getMessage()]
    finally:
        await hearing.close()
        await telling.close()
