"""agent-mcp-gateway: one MCP endpoint in front of many MCP servers, with per-agent policy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agent-mcp-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
