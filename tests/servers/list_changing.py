"""List-changing fixture: tools appear and disappear at run time, announced with
notifications/tools/list_changed.

fastmcp 4.1.2 does not announce `add_tool`/`remove_tool` by itself, so each change sends
`ToolListChangedNotification` explicitly. Inside a call it goes out with `ctx.send_notification`,
which ties it to the running request: the only way out on a 2026-07-28 (sessionless)
connection, and it works on 2025-11-25 sessions too. `add_tool_later` changes the list after
its call has returned and notifies on the session alone, which only a session-era (legacy)
client receives.
"""

from __future__ import annotations

import asyncio

import anyio
import mcp_types
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError

from _common import run

mcp = FastMCP("list_changing")
_background: set[asyncio.Task[None]] = set()  # strong references until each task ends


@mcp.tool
def v1() -> str:
    """The tool this server starts with."""
    return "v1"


def _register(name: str) -> None:
    def dynamic() -> str:
        return name

    try:  # adding a name twice replaces the tool
        mcp.local_provider.remove_tool(name)
    except KeyError:
        pass
    mcp.tool(dynamic, name=name, description=f"Added at run time as {name!r}; returns its name.")


@mcp.tool
async def add_tool(name: str, ctx: Context) -> str:
    """Register a tool called `name` (it returns its own name) and announce the change."""
    _register(name)
    await ctx.send_notification(mcp_types.ToolListChangedNotification())
    return f"added {name}"


@mcp.tool
async def remove_tool(name: str, ctx: Context) -> str:
    """Remove the tool called `name` and announce the change."""
    try:
        mcp.local_provider.remove_tool(name)
    except KeyError:
        raise ToolError(f"no tool named {name!r}") from None
    await ctx.send_notification(mcp_types.ToolListChangedNotification())
    return f"removed {name}"


@mcp.tool
async def add_tool_later(name: str, delay: float, ctx: Context) -> str:
    """After `delay` seconds, register `name` and notify outside any request (legacy sessions)."""
    session = ctx.session

    async def later() -> None:
        await anyio.sleep(delay)
        _register(name)
        await session.send_notification(mcp_types.ToolListChangedNotification())

    task = asyncio.get_running_loop().create_task(later())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return f"will add {name} in {delay:g}s"


if __name__ == "__main__":
    run(mcp)
