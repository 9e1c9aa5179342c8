"""Chatter fixture: a call that logs its own tag while it runs, to see where logs end up."""

from __future__ import annotations

import anyio
from fastmcp import Context, FastMCP

from _common import run

mcp = FastMCP("chatter")


@mcp.tool
async def chatter(tag: str, ctx: Context, n: int = 10, delay: float = 0.05) -> str:
    """Send n log messages carrying `tag`, `delay` seconds apart."""
    for step in range(1, n + 1):
        await ctx.info(f"{tag} {step}")
        await anyio.sleep(delay)
    return f"{tag} done"


if __name__ == "__main__":
    run(mcp)
