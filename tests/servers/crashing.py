"""Crashing fixture: a server that dies in the middle of a call, on request."""

from __future__ import annotations

import os
import sys

import anyio
from fastmcp import FastMCP

from _common import run

mcp = FastMCP("crashing")


@mcp.tool
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@mcp.tool
def echo(text: str) -> str:
    """Return the text."""
    return text


@mcp.tool
def crash() -> str:
    """Exit the process at once, without answering."""
    sys.stderr.flush()
    os._exit(1)


@mcp.tool
async def sleep_then_crash(seconds: float) -> str:
    """Sleep, then exit the process without answering."""
    await anyio.sleep(seconds)
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    run(mcp)
