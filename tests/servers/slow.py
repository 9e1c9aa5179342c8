"""Slow fixture: a tool that takes as long as asked, for timeouts and cancellation."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import anyio
from fastmcp import FastMCP

from _common import run

mcp = FastMCP("slow")
# Where each `sleep` call leaves a file as it starts, when set: tests wait for calls to be in
# flight by counting them, not for a time a loaded machine can exceed.
STARTED = os.environ.get("SLOW_STARTED_DIR")


@mcp.tool
async def sleep(seconds: float) -> str:
    """Sleep without blocking the server, then say how long."""
    if STARTED:
        Path(STARTED, uuid.uuid4().hex).touch()
    await anyio.sleep(seconds)
    return f"slept {seconds:g}"


@mcp.tool
def pid() -> int:
    """This server's process id."""
    return os.getpid()


if __name__ == "__main__":
    # SLOW_START_SECONDS delays the handshake, so tests can watch the gateway start up.
    time.sleep(float(os.environ.get("SLOW_START_SECONDS", "0")))
    run(mcp)
