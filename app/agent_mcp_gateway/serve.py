"""Start the gateway on the configured transport: stdio for local clients, HTTP via Granian."""

from __future__ import annotations

import logging
import os
import sys

from . import config
from .gateway import Gateway
from .logs import setup_logging
from .server import build_server

log = logging.getLogger("agent_mcp_gateway")


def load_config() -> config.GatewayConfig:
    """Load and validate configuration; a bad file stops start-up with a clear message."""
    try:
        return config.load()
    except config.ConfigError as exc:
        print(f"agent-mcp-gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_gateway() -> Gateway:
    return Gateway(load_config())


def run() -> int:
    setup_logging()
    transport = os.environ.get("GATEWAY_TRANSPORT", "stdio").lower()
    if transport == "stdio":
        server = build_server(load_gateway(), exit_on_signal=True)
        try:
            server.run(transport="stdio", show_banner=False)
        except* BrokenPipeError:  # the client closed its end first; nobody is left to answer
            pass
        return 0
    if transport == "http":
        from .http import run_http

        return run_http()
    print(f"agent-mcp-gateway: GATEWAY_TRANSPORT must be stdio or http, not {transport!r}", file=sys.stderr)
    return 2
