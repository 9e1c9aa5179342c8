"""Echo fixture: plain, structured and failing results, and tool names that policies match."""

from __future__ import annotations

import os

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers

from _common import run

mcp = FastMCP("echo")


@mcp.tool
def echo(text: str) -> str:
    """Return the text, after the ECHO_PREFIX environment variable if it is set."""
    return os.environ.get("ECHO_PREFIX", "") + text


@mcp.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool
def fail(message: str) -> str:
    """Always fails with an error result carrying the message."""
    raise ToolError(message)


@mcp.tool
def structured() -> dict:
    """A nested structured result."""
    return {"name": "fixture", "nested": {"numbers": [1, 2, 3], "flag": True, "inner": {"depth": 2}}}


@mcp.tool
def env(name: str) -> str:
    """The value of an environment variable of this process ("" when unset)."""
    return os.environ.get(name, "")


@mcp.tool
def request_headers() -> dict[str, str]:
    """The HTTP headers this call arrived with (empty over stdio)."""
    return get_http_headers(include_all=True)


@mcp.tool
def request_meta(ctx: Context) -> dict[str, str]:
    """The W3C trace context this call's `_meta` carried."""
    carried = dict((ctx.request_context.meta if ctx.request_context is not None else None) or {})
    return {key: str(carried[key]) for key in ("traceparent", "tracestate") if key in carried}


@mcp.tool
def get_user_all() -> list[dict]:
    """List every user."""
    return [{"id": 1, "name": "ada"}, {"id": 2, "name": "linus"}]


@mcp.tool
def get_user_one(user_id: int) -> dict:
    """One user by id."""
    return {"id": user_id, "name": f"user{user_id}"}


@mcp.tool
def drop_table(table: str) -> str:
    """Pretend to drop a table (a name for deny rules to match)."""
    return f"dropped {table}"


@mcp.tool
def delete_row(table: str, row_id: int) -> str:
    """Pretend to delete a row (a name for deny rules to match)."""
    return f"deleted {table}[{row_id}]"


@mcp.tool
def web_search(query: str) -> list[str]:
    """Pretend to search the web."""
    return [f"result for {query}"]


@mcp.tool
def web_fetch(url: str) -> str:
    """Pretend to fetch a page."""
    return f"content of {url}"


if __name__ == "__main__":
    run(mcp)
