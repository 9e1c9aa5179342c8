"""2026-07-28-only fixture, on the MCP SDK's own server (`MCPServer`): it refuses the handshake
era and serves `subscriptions/listen`, through which its list changes and resource updates go.
It declares the tasks extension with a stub `tasks/get`, and `declared` tells which extensions
a call's caller declared.

The SDK's servers serve both eras (the client's first request decides); nothing switches the
handshake off, so a server middleware vetoes `initialize` as the SDK documents (raising before
`call_next`), with the error a 2026-only server answers it with: UNSUPPORTED_PROTOCOL_VERSION
naming the versions it serves. fastmcp 4.1.2 does not serve `subscriptions/listen`, hence the
SDK's server here.
"""

from __future__ import annotations

from typing import Any

import mcp_types
from mcp import MCPError
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context, MCPServer
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from _common import run


async def refuse_handshake(ctx: Any, call_next: Any) -> Any:
    """The handshake era is not served: `initialize` is refused before it is handled."""
    if ctx.method == "initialize":
        requested = (ctx.params or {}).get("protocolVersion", "")
        raise MCPError(
            code=mcp_types.UNSUPPORTED_PROTOCOL_VERSION,
            message="this server speaks only 2026-07-28; send server/discover",
            data={"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": str(requested)},
        )
    return await call_next(ctx)


class Tasks(Extension):
    """Declares the tasks extension and answers `tasks/get` for any id with a task that is still
    working: enough to tell whether a gateway advertises, asks for or relays tasks."""

    identifier = "io.modelcontextprotocol/tasks"

    def methods(self) -> list[MethodBinding]:
        async def get(ctx: Any, params: Any) -> dict[str, Any]:
            return {"taskId": params.task_id, "status": "working", "ttlMs": 60_000}

        return [MethodBinding("tasks/get", TaskParams, get)]


class TaskParams(mcp_types.RequestParams):
    task_id: str = Field(alias="taskId")


mcp: MCPServer[Any] = MCPServer("modern", middleware=[refuse_handshake], extensions=[Tasks()])
NOTE = "modern://note"


@mcp.tool(structured_output=False)
def echo(text: str) -> str:
    """Return the text."""
    return text


@mcp.tool(structured_output=False)
def era(ctx: Context) -> str:
    """The protocol version the call came in."""
    return ctx.request_context.protocol_version


@mcp.tool(structured_output=False)
def declared(ctx: Context) -> str:
    """The extensions the caller declared with this call, comma-separated."""
    meta = ctx.request_context.meta or {}
    capabilities = meta.get(mcp_types.CLIENT_CAPABILITIES_META_KEY) or {}
    return ",".join(sorted(capabilities.get("extensions") or {}))


@mcp.tool(structured_output=False)
async def add_tool(name: str, ctx: Context) -> str:
    """Register a tool called `name` (it returns its name) and publish the list change to the
    listen streams."""

    def dynamic() -> str:
        return name

    mcp.add_tool(
        dynamic,
        name=name,
        description=f"Added at run time as {name!r}; returns its name.",
        structured_output=False,
    )
    await ctx.notify_tools_changed()
    return f"added {name}"


@mcp.tool(structured_output=False)
async def touch(uri: str, ctx: Context) -> str:
    """Publish an update of resource `uri` to the listen streams subscribed to it."""
    await ctx.notify_resource_updated(uri)
    return f"touched {uri}"


@mcp.prompt()
def greet(name: str) -> str:
    """A greeting for `name`."""
    return f"Hello, {name}, from 2026-07-28."


@mcp.resource(NOTE)
def note() -> str:
    """A note only a 2026-07-28 client can read."""
    return "spoken in 2026-07-28"


if __name__ == "__main__":
    run(mcp)
