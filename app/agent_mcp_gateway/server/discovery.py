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
from agent_mcp_gateway.server.search_view import HEALTH_NOTES, Detail, ToolSearch, health

AgentId = str | None
ServerName = Annotated[str, Field(description="From list_servers.")]

# The up-front cost of the discovery view is these four definitions (benchmarks/context_tokens.py):
# each says what it does and what comes next, in as few words as a model needs.
LIST_SERVERS = "List your MCP servers: what each is for, and any unhealthy one."
SEARCH_TOOLS = "Find tools for a task across your servers, best first; then execute_tool."
GET_SERVER_TOOLS = "One server's tools you may call, with input schemas."
EXECUTE_TOOL = "Call a server's tool with its arguments; returns its result."
MAX_QUERY = 1000  # characters of a search query
MAX_LIMIT = 50  # tools one search returns at most
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
        self.search = ToolSearch(gateway)

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
                # The era its shared session negotiated (None until it first connected).
                entry["protocol"] = downstream.protocol if downstream else None
            state = health(self.gateway.pool.get(name))
            if include_metadata or state != "up":
                entry["health"] = state
            if state != "up":
                entry["health_note"] = HEALTH_NOTES[state]
            servers.append(entry)
        return {"servers": servers}

    async def search_tools(
        self, op: Operation, query: str, limit: int = 5, server: str | None = None, detail: Detail = "brief"
    ) -> dict[str, Any]:
        """The agent's allowed tools ranked for `query`; with `server`, that server's only (the
        server's policy decides first, as for get_server_tools). A limit out of 1..MAX_LIMIT is
        brought into it and a query cut to MAX_QUERY characters: bounds every agent would
        otherwise load in the tool's schema."""
        query, limit = query[:MAX_QUERY], max(1, min(MAX_LIMIT, limit))
        if server is not None:
            self.forward.decide(op, "search_tools", server)
            self.gateway.listing(server, op)  # an unknown server is SERVER_UNAVAILABLE, as elsewhere
        return await self.search.search(op, query, limit, server, detail)

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
        include_metadata: Annotated[bool, Field(description="Add transport and address.")] = False,
    ) -> dict[str, Any]:
        return tools.list_servers(current_operation(), include_metadata)

    async def search_tools(
        query: str,
        agent_id: AgentId = None,
        limit: int = 5,
        server: str | None = None,
        detail: Annotated[Detail, Field(description="full: with schemas.")] = "brief",
    ) -> dict[str, Any]:
        return await tools.search_tools(current_operation(), query, limit, server, detail)

    async def get_server_tools(
        server: ServerName,
        agent_id: AgentId = None,
        names: Annotated[str | None, Field(description="Comma-separated.")] = None,
        pattern: Annotated[str | None, Field(description="Glob, e.g. get_*")] = None,
        max_schema_tokens: Annotated[int | None, Field(ge=1, description="Token budget.")] = None,
    ) -> dict[str, Any]:
        return await tools.get_server_tools(current_operation(), server, names, pattern, max_schema_tokens)

    async def execute_tool(
        server: str,
        tool: str,
        ctx: Context,
        agent_id: AgentId = None,
        args: dict[str, Any] | None = None,
        timeout_ms: Annotated[int | None, Field(ge=1, le=MAX_TIMEOUT_MS)] = None,
    ) -> ToolResult:
        return await tools.execute_tool(current_operation(), server, tool, args, timeout_ms, ClientRelay(ctx))

    async def get_gateway_status() -> dict[str, Any]:
        return tools.gateway_status()

    described: list[tuple[Any, str]] = [
        (list_servers, LIST_SERVERS),
        (search_tools, SEARCH_TOOLS),
        (get_server_tools, GET_SERVER_TOOLS),
        (execute_tool, EXECUTE_TOOL),
    ]
    if tools.gateway.settings.debug:
        described.append((get_gateway_status, GATEWAY_STATUS))
    # No output schema: the results are self-describing JSON, and a schema of "an object" is
    # context spent for nothing.
    registered = [
        mcp.add_tool(_compact(FunctionTool.from_function(fn, description=text, output_schema=None)))
        for fn, text in described
    ]
    return {tool.name: tool for tool in registered}


def _compact(tool: FunctionTool) -> FunctionTool:
    """The tool with its input schema as short as it can say the same to a model: an optional
    argument as its type alone (`anyOf [type, null]` with `default: null` tells a model only
    that it may leave the argument out, which `required` already says), and no
    `additionalProperties` (an object argument is open; the tool's arguments are named).
    Arguments are still validated against the function's signature; this is only what every
    agent loads up front."""
    schema = dict(tool.parameters)
    schema.pop("additionalProperties", None)
    properties = {}
    for name, spec in schema.get("properties", {}).items():
        spec = dict(spec)
        branches = spec.get("anyOf")
        if isinstance(branches, list) and {"type": "null"} in branches and len(branches) == 2:
            del spec["anyOf"]
            spec.update(next(branch for branch in branches if branch != {"type": "null"}))
        if "default" in spec and spec["default"] is None:
            del spec["default"]
        if spec.get("additionalProperties") is True:
            del spec["additionalProperties"]
        properties[name] = spec
    schema["properties"] = properties
    return tool.model_copy(update={"parameters": schema})


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
