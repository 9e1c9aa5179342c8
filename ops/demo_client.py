"""Walk the gateway's discover -> inspect -> execute flow once, as an agent would."""

from __future__ import annotations

import asyncio
import json
import sys

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport


async def main(url: str) -> None:
    async with Client(StreamableHttpTransport(url)) as client:
        servers = await client.call_tool_mcp("list_servers", {"agent_id": "researcher"})
        print("list_servers:", json.dumps(servers.structured_content, indent=2))
        tools = await client.call_tool_mcp(
            "get_server_tools", {"agent_id": "researcher", "server": "time", "max_schema_tokens": 400}
        )
        print("get_server_tools:", [tool["name"] for tool in tools.structured_content["tools"]])
        now = await client.call_tool_mcp(
            "execute_tool",
            {
                "agent_id": "researcher",
                "server": "time",
                "tool": "get_current_time",
                "args": {"timezone": "UTC"},
            },
        )
        print("execute_tool:", now.content[0].text)
        try:
            await client.call_tool_mcp(
                "execute_tool",
                {
                    "agent_id": "researcher",
                    "server": "notes",
                    "tool": "add_note",
                    "args": {"title": "x", "body": "y"},
                },
            )
        except Exception as denied:  # the demo policy lets researchers read notes, not write them
            print("denied as expected:", denied)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/mcp"))
