"""The aggregate view over stdio: two gateway processes, each pinned to its agent
(GATEWAY_AGENT), in both protocol eras. The view's behaviour is in
tests/inprocess/test_aggregate.py; this checks a stdio client gets the same."""

from __future__ import annotations

import pytest
from mcp import MCPError

from conftest import GatewayFiles, stdio_gateway
from inprocess.test_aggregate import ERAS, names, write_config


@pytest.mark.parametrize("mode", ERAS)
async def test_each_agent_sees_its_own_view_over_stdio(gateway_files: GatewayFiles, mode: str) -> None:
    write_config(gateway_files)
    async with (
        stdio_gateway(gateway_files, mode, GATEWAY_AGENT="ide") as ide,
        stdio_gateway(gateway_files, mode, GATEWAY_AGENT="narrow") as narrow,
    ):
        ide_tools, ide_prompts, ide_resources, _ = await names(ide)
        assert "st__hello" in ide_tools and ide_prompts == {"st__review"} and "note://readme" in ide_resources
        assert await names(narrow) == ({"echo__echo", "echo__add"}, set(), set(), set())
        assert (await ide.call_tool("st__hello", {"name": "bo"})).data == "hello bo"
        assert (await narrow.call_tool("echo__add", {"a": 2, "b": 3})).data == 5
        with pytest.raises(MCPError, match="Unknown tool"):
            await narrow.call_tool_mcp("st__hello", {"name": "bo"})
