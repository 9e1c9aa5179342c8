"""Shared start-up for the fixture servers, FastMCP's and the SDK's own (`MCPServer`) alike: stdio
by default, Streamable HTTP on 127.0.0.1:PORT at /mcp with --http PORT; --start-delay SECONDS
plays a server that is slow to start (it answers nothing before then).

stdout is the protocol channel in stdio mode, so nothing here prints: logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Quiet start-up before fastmcp is imported: no banner, no update check, warnings only.
os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

from mcp import MCPDeprecationWarning
from mcp.server.mcpserver import MCPServer

if TYPE_CHECKING:  # the SDK-only fixtures do not import fastmcp (a second of CPU per start)
    from fastmcp import FastMCP

# ctx.info() on a 2026-07-28 connection warns that the logging capability is deprecated; the
# message is still delivered, and the fixtures send it on purpose.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)


def run(mcp: FastMCP | MCPServer[Any], serve_http: Callable[[int], None] | None = None) -> None:
    """Serve `mcp` as the command line says; `serve_http(port)` replaces the plain HTTP server
    (e.g. one with an event store)."""
    parser = argparse.ArgumentParser(description=f"{mcp.name} test server")
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT at /mcp"
    )
    parser.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before serving (a slow server; over stdio its initialize waits in the pipe)",
    )
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    if args.start_delay > 0:
        time.sleep(args.start_delay)
    if args.http and serve_http is not None:
        serve_http(args.http)
    elif isinstance(mcp, MCPServer):
        if args.http:
            mcp.run("streamable-http", host="127.0.0.1", port=args.http)
        else:
            mcp.run("stdio")
    elif args.http:
        mcp.run(transport="http", host="127.0.0.1", port=args.http, show_banner=False)
    else:
        mcp.run(transport="stdio", show_banner=False)
