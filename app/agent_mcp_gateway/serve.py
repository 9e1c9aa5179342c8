"""Start the gateway on the configured transport: stdio for local clients, HTTP via Granian."""

from __future__ import annotations

import importlib.util
import logging
import sys
from functools import partial

import anyio

from . import config, tracing
from .gateway import Gateway
from .identity import identity_problem
from .logs import setup_logging
from .server import build_server
from .settings import Settings
from .stdio_drain import StdioDrain

log = logging.getLogger("agent_mcp_gateway")


def fail(message: str) -> SystemExit:
    """A start-up problem: one line on stderr, exit status 2, no traceback."""
    print(f"agent-mcp-gateway: {message}", file=sys.stderr)
    return SystemExit(2)


def load_config(settings: Settings) -> config.GatewayConfig:
    """Load and validate configuration; a bad file or an unsafe identity set-up stops start-up."""
    try:
        loaded = config.load(settings.mcp_config, settings.rules)
    except config.ConfigError as exc:
        raise fail(f"configuration error: {exc}") from None
    problem = identity_problem(settings, loaded.rules)
    if problem is not None:
        raise fail(problem)
    return loaded


def run(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.log_format)
    if settings.transport == "http":
        from .http import run_http

        return run_http(settings)
    tracing.setup(settings)
    drain = StdioDrain(settings.shutdown_grace)
    server = build_server(Gateway(load_config(settings), settings), on_signal=drain.stop)
    # uvloop, as Granian picks for HTTP, when installed: less CPU per call than asyncio's loop.
    options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}
    with drain:
        anyio.run(partial(server.run_async, "stdio", show_banner=False), backend_options=options)
    return 0
