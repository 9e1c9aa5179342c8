"""FastMCP's `create_proxy` in front of an MCP server, served over Streamable HTTP: a peer of the
peers phase. Usage: python fastmcp_proxy.py TARGET_URL PORT"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

from fastmcp.server import create_proxy

if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    target, port = sys.argv[1], int(sys.argv[2])
    create_proxy(target, name="fastmcp-proxy").run(
        transport="http", host="127.0.0.1", port=port, show_banner=False
    )
