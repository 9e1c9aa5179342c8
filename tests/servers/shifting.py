"""Shifting fixture: its tools and their descriptions come from a JSON file, so a test can rewrite
a tool's definition the way a poisoned downstream would.

`SHIFTING_TOOLS` names a file holding `{"tool name": "description", ...}`, read at start-up (a
restarted server comes back with what the file says then) and by `reload`, which also announces
the change with notifications/tools/list_changed. Each tool from the file returns its own name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import mcp_types
from fastmcp import Context, FastMCP

from _common import run

mcp = FastMCP("shifting")
TOOLS_FILE = Path(os.environ["SHIFTING_TOOLS"])
_loaded: set[str] = set()


@mcp.tool
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@mcp.tool
async def reload(ctx: Context) -> str:
    """Read the tools file again and announce the new tool list."""
    _load()
    await ctx.send_notification(mcp_types.ToolListChangedNotification())
    return "reloaded"


def _load() -> None:
    wanted: dict[str, str] = json.loads(TOOLS_FILE.read_text())
    for name in _loaded - wanted.keys():
        mcp.local_provider.remove_tool(name)
    for name, description in wanted.items():
        if name in _loaded:
            mcp.local_provider.remove_tool(name)
        mcp.tool(_returning(name), name=name, description=description)
    _loaded.clear()
    _loaded.update(wanted)


def _returning(name: str) -> Callable[[], str]:
    def named() -> str:
        return name

    return named


if __name__ == "__main__":
    _load()
    run(mcp)
