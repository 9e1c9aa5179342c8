"""Routed fixture: a tool whose argument is mirrored in an `Mcp-Param-Region` header (2026-07-28)."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field

from _common import run

mcp = FastMCP("routed")


@mcp.tool
def lookup(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
    """Answer for the region, which a client also sends as the Mcp-Param-Region header."""
    return f"region {region}"


if __name__ == "__main__":
    run(mcp)
