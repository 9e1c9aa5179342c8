"""Progress fixture: progress and log notifications while a call runs."""

from __future__ import annotations

import anyio
from fastmcp import Context, FastMCP

from _common import run

mcp = FastMCP("progress")


@mcp.tool
async def count(n: int, ctx: Context, delay: float = 0.05) -> str:
    """Count to n, sending a progress notification and a log message at every step."""
    for step in range(1, n + 1):
        await anyio.sleep(delay)
        await ctx.info(f"step {step} of {n}")
        await ctx.report_progress(step, n, f"step {step}")
    return f"counted {n}"


if __name__ == "__main__":
    run(mcp)
