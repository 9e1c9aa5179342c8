"""The gateway tools agents see: discover servers, inspect their tools, execute one.

Identity is already resolved by the pipeline when these run (`operation.get()`); each tool
decides policy under the operation's snapshot through `forward.py`, which records the deciding
rule on the operation for the audit line.
"""

from __future__ import annotations

import json
import os
import time
from fnmatch import fnmatchcase
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import mcp_types as mt
from fastmcp import Context, FastMCP
from fastmcp.tools.base import Tool, ToolResult
from fastmcp.tools.function_tool import FunctionTool
from pydantic import Field

from agent_mcp_gateway.config import ServerConfig
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.operation import Operation, current_operation
from agent_mcp_gateway.server.forward import Forward
from agent_mcp_gateway.server.relay import ClientRelay

AgentId = Annotated[
    str | None,
    Field(description="Your agent id. Optional when the gateway assigns a default agent."),
]

LIST_SERVERS = (
    "Step 1 of 3. List the MCP servers you may use and what each is for. "
    "Next: get_server_tools(server) to see a server's tools, then execute_tool to call one."
)
GET_SERVER_TOOLS = (
    "Step 2 of 3. Show the tools you may call on one server, with their input schemas. "
    "Narrow with names (comma-separated) or pattern (a glob such as 'get_*'), and cap the size "
    "with max_schema_tokens. Next: execute_tool."
)
EXECUTE_TOOL = (
    "Step 3 of 3. Call one tool on a server with its arguments and get its result as the "
    "server returned it. Discover names and argument schemas with get_server_tools first."
)
MAX_TIMEOUT_MS = 24 * 3600 * 1000  # a day: longer is a mistake, and huge numbers are refused
GATEWAY_STATUS = "Debug only: the gateway's configuration, reload history and server health."


def estimate_tokens(value: Any) -> int:
    """The budget's unit: serialized characters / 4, a common rough tokens estimate."""
    return (len(json.dumps(value, separators=(",", ":"), default=str)) + 3) // 4


class GatewayTools:
    """What the gateway tools do, for an operation whose agent is already settled.

    Plain methods on the gateway's state, so they can be exercised without the MCP layer;
    each records the rule that decided on `op` for the audit line.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.forward = Forward(gateway)

    def list_servers(self, op: Operation, include_metadata: bool = False) -> dict[str, Any]:
        snapshot = self.gateway.pinned(op)
        names = snapshot.engine.visible_servers(op.agent_id, list(snapshot.config.servers))
        servers = []
        for name in names:
            config = snapshot.config.servers[name]
            entry: dict[str, Any] = {"name": name, "description": config.description}
            if include_metadata:
                entry.update(_metadata(config))
                downstream = self.gateway.pool.get(name)
                entry["health"] = downstream.state if downstream else "unknown"
                # The era its shared session negotiated (None until it first connected).
                entry["protocol"] = downstream.protocol if downstream else None
            servers.append(entry)
        return {"servers": servers}

    async def get_server_tools(
        self,
        op: Operation,
        server: str,
        names: str | None = None,
        pattern: str | None = None,
        max_schema_tokens: int | None = None,
    ) -> dict[str, Any]:
        engine = self.gateway.pinned(op).engine
        downstream = self.forward.listing(op, "get_server_tools", server)
        allowed = [
            tool
            for tool in await downstream.list_tools()
            if engine.decide(op.agent_id, server, tool.name).allowed
        ]
        wanted = {n.strip() for n in names.split(",") if n.strip()} if names else None
        selected = [
            tool
            for tool in allowed
            if (wanted is None or tool.name in wanted)
            and (pattern is None or fnmatchcase(tool.name, pattern))
        ]
        tools, used = [], 0
        for tool in selected:
            entry = _describe_tool(tool)
            cost = estimate_tokens(entry)
            if max_schema_tokens is not None and used + cost > max_schema_tokens:
                break
            tools.append(entry)
            used += cost
        return {
            "server": server,
            "tools": tools,
            "total_available": len(allowed),
            "returned": len(tools),
            "tokens_used": used,
        }

    async def execute_tool(
        self,
        op: Operation,
        server: str,
        tool: str,
        args: dict[str, Any] | None = None,
        timeout_ms: int | None = None,
        relay: ClientRelay | None = None,
    ) -> ToolResult:
        return await self.forward.call_tool(op, server, tool, args or {}, relay, timeout_ms)

    def gateway_status(self) -> dict[str, Any]:
        gateway = self.gateway
        snapshot = gateway.snapshot
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - gateway.started_at, 3),
            "config_paths": {"mcp": str(snapshot.config.mcp_path), "rules": str(snapshot.config.rules_path)},
            "agents": snapshot.engine.agent_ids,
            "servers": {d.name: d.status() for d in gateway.pool},
            "reloads": [
                {"at": e.at, "source": e.source, "ok": e.ok, "error": e.error} for e in gateway.reloads
            ],
            "sessions": [
                {"agent_id": record.agent_id, "created_at": record.created_at, "last_used": record.last_used}
                for record in gateway.sessions.records()[:100]
            ],
        }


def register_tools(mcp: FastMCP, tools: GatewayTools) -> dict[str, Tool]:
    """The MCP face of `GatewayTools`: schemas and descriptions agents see. Returns the tools by
    name, for the pipeline to run them (see `ViewSelection.on_call_tool`)."""

    async def list_servers(
        agent_id: AgentId = None,
        include_metadata: Annotated[
            bool, Field(description="Also return transport, command or url, and health.")
        ] = False,
    ) -> dict[str, Any]:
        return tools.list_servers(current_operation(), include_metadata)

    async def get_server_tools(
        server: Annotated[str, Field(description="A server name from list_servers.")],
        agent_id: AgentId = None,
        names: Annotated[str | None, Field(description="Comma-separated tool names to return.")] = None,
        pattern: Annotated[str | None, Field(description="Glob on tool names, e.g. 'get_*'.")] = None,
        max_schema_tokens: Annotated[
            int | None, Field(ge=1, description="Stop adding tools past this many tokens.")
        ] = None,
    ) -> dict[str, Any]:
        return await tools.get_server_tools(current_operation(), server, names, pattern, max_schema_tokens)

    async def execute_tool(
        server: Annotated[str, Field(description="A server name from list_servers.")],
        tool: Annotated[str, Field(description="A tool name from get_server_tools.")],
        ctx: Context,
        agent_id: AgentId = None,
        args: Annotated[dict[str, Any] | None, Field(description="The tool's arguments.")] = None,
        timeout_ms: Annotated[
            int | None, Field(ge=1, le=MAX_TIMEOUT_MS, description="Give up after this many milliseconds.")
        ] = None,
    ) -> ToolResult:
        return await tools.execute_tool(current_operation(), server, tool, args, timeout_ms, ClientRelay(ctx))

    async def get_gateway_status() -> dict[str, Any]:
        return tools.gateway_status()

    described: list[tuple[Any, str]] = [
        (list_servers, LIST_SERVERS),
        (get_server_tools, GET_SERVER_TOOLS),
        (execute_tool, EXECUTE_TOOL),
    ]
    if tools.gateway.settings.debug:
        described.append((get_gateway_status, GATEWAY_STATUS))
    registered = [mcp.add_tool(FunctionTool.from_function(fn, description=text)) for fn, text in described]
    return {tool.name: tool for tool in registered}


def _metadata(config: ServerConfig) -> dict[str, Any]:
    """How a server is reached, with nothing secret: no args or env of a command, a URL's
    scheme, host and port only (userinfo, path and query can all carry credentials, e.g.
    `/s/SK-.../mcp;jsessionid=...`), and headers by name only."""
    if config.command:
        return {"transport": config.kind, "command": config.command}
    assert config.url is not None
    parts = urlsplit(config.url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return {
        "transport": config.kind,
        "url": urlunsplit((parts.scheme, netloc, "", "", "")),
        "headers": sorted(config.headers),
    }


def _describe_tool(tool: mt.Tool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": tool.name,
        "description": tool.description or "",
        "inputSchema": tool.input_schema,
    }
    if tool.output_schema:
        entry["outputSchema"] = tool.output_schema
    if tool.annotations:
        entry["annotations"] = tool.annotations.model_dump(exclude_none=True, by_alias=True)
    return entry
