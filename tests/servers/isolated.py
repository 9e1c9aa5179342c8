"""Isolated fixture: state kept per session, and messages sent after the call that caused them
returned, to see whose client a gateway lets them reach.

- remember(value) / recall(): a value kept per MCP session, that is per process over stdio (a
  gateway that shares one session between agents shares it too); whoami(): this process's pid.
- late(tag, after_hold): returns at once, then sends a log message, an elicitation and a
  sampling request carrying `tag` on the session, outside any call: once a `hold` call is
  running on this process (`after_hold`), else right away. What the two requests got is kept
  for `hold` to report.
- hold(seconds): waits until the late messages were sent (or `seconds` passed) and returns what
  the two requests got.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import mcp_types as mt
from fastmcp import Context, FastMCP

from _common import run

mcp = FastMCP("isolated")
kept: dict[str, str] = {}  # one stdio process serves one session
hold_started = asyncio.Event()
late_sent = asyncio.Event()
outcomes: dict[str, str] = {}
tasks: set[asyncio.Task[None]] = set()


@mcp.tool
def remember(value: str) -> str:
    """Keep `value` for this session."""
    kept["value"] = value
    return "kept"


@mcp.tool
def recall() -> str:
    """The value this session kept, or '' when it kept none."""
    return kept.get("value", "")


@mcp.tool
def whoami() -> int:
    """This server process's id."""
    return os.getpid()


async def _send_late(session: Any, tag: str, after_hold: bool) -> None:
    if after_hold:
        await hold_started.wait()
    await session.send_log_message(level="info", data=f"late log {tag}", logger="isolated")
    try:
        schema: dict[str, Any] = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
        answer = await session.elicit_form(f"late elicitation {tag}", schema)
        outcomes["elicitation"] = f"answered {answer.action}"
    except Exception as exc:
        outcomes["elicitation"] = f"refused {exc}"
    try:
        message = mt.SamplingMessage(
            role="user", content=mt.TextContent(type="text", text=f"late sampling {tag}")
        )
        sampled = await session.create_message([message], max_tokens=10)
        outcomes["sampling"] = f"answered {sampled.content}"
    except Exception as exc:
        outcomes["sampling"] = f"refused {exc}"
    late_sent.set()


@mcp.tool
async def late(tag: str, ctx: Context, after_hold: bool = False) -> str:
    """Send a log message, an elicitation and a sampling request after this call returns."""
    task = asyncio.get_running_loop().create_task(_send_late(ctx.session, tag, after_hold))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return "scheduled"


@mcp.tool
async def hold(seconds: float) -> dict[str, str]:
    """Wait for the late messages (at most `seconds`); what their requests got."""
    hold_started.set()
    try:
        await asyncio.wait_for(late_sent.wait(), seconds)
    except TimeoutError:
        return {"timed_out": "yes"}
    return outcomes


if __name__ == "__main__":
    run(mcp)
