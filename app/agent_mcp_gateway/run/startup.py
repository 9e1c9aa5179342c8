"""Start-up checks shared by both transports: a bad configuration is one line and exit status 2."""

from __future__ import annotations

import sys

from agent_mcp_gateway import gateway
from agent_mcp_gateway.config import ConfigError, GatewayConfig
from agent_mcp_gateway.settings import Settings


def fail(message: str) -> SystemExit:
    """A start-up problem: one line on stderr, exit status 2, no traceback."""
    print(f"agent-mcp-gateway: {message}", file=sys.stderr)
    return SystemExit(2)


def load_config(settings: Settings) -> GatewayConfig:
    """The configuration, or exit status 2 with one line naming what is wrong: a bad file, or
    rules that would open the service to unauthenticated claims or drop a pinned agent."""
    try:
        return gateway.load_config(settings)
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}") from None
    except gateway.UnsafeIdentity as exc:
        raise fail(str(exc)) from None
