"""Serving over HTTP with Granian: the process that spawns the worker, and the worker's factory.

The worker builds its own settings and `Gateway` from the environment (`worker_app`), because
Granian starts it as a fresh interpreter that imports the factory by name.
"""

from __future__ import annotations

import logging
import os
import resource

from starlette.applications import Starlette

from agent_mcp_gateway.edge.drain import CLOSE_SECONDS
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.observe.logs import setup_logging
from agent_mcp_gateway.run.http_app import create_app
from agent_mcp_gateway.run.startup import load_config
from agent_mcp_gateway.run.workers import several_workers_warnings, share_request_state_key, worker_settings
from agent_mcp_gateway.settings import Settings, load_settings

log = logging.getLogger("agent_mcp_gateway.http")

RESERVED_FILES = 1024  # descriptors kept for downstream pipes, logs and the audit file (at most a quarter)
WORKER_FACTORY = "agent_mcp_gateway.run.granian:worker_app"


def worker_app() -> Starlette:
    """The ASGI application of a Granian worker: settings and gateway read from the environment."""
    settings = worker_settings(load_settings())
    setup_logging(settings.log_level, settings.log_format)
    tracing.setup(settings)
    return create_app(Gateway(load_config(settings), settings))


def run_http(settings: Settings) -> int:
    """Serve with Granian: `GATEWAY_WORKERS` workers (one by default, because session-era MCP
    sessions live in one worker's memory)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    load_config(settings)  # fail fast, in this process, before a worker is spawned
    share_request_state_key(settings, os.environ)
    for warning in several_workers_warnings(settings):
        log.warning(warning, extra={"workers": settings.workers})
    log.info(
        "serving",
        extra={"url": f"http://{settings.http_host}:{settings.http_port}/mcp", "workers": settings.workers},
    )
    server = Granian(
        WORKER_FACTORY,
        factory=True,
        address=settings.http_host,
        port=settings.http_port,
        interface=Interfaces.ASGI,
        # HTTP/1.1 only: in its auto mode Granian waits, with no timeout, to learn whether a new
        # connection speaks HTTP/2, so one that sent nothing held its slot for good.
        http=HTTPModes.http1,
        workers=settings.workers,
        log_dictconfig={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"_granian": {"level": "WARNING", "propagate": True}},
        },
        backpressure=connection_limit(settings.max_connections),
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(settings.header_timeout * 1000))),
        # The worker drains for up to the grace, then closes its downstream servers.
        workers_kill_timeout=settings.shutdown_grace + CLOSE_SECONDS,
    )
    server.serve()
    return 0


def connection_limit(wanted: int) -> int:
    """How many connections the worker may hold: `wanted`, if the open-file limit can be raised
    to fit them (the worker inherits it), else what fits, with a warning.

    Python does not raise the soft limit by itself, and a common default of 1,024 would stop
    the worker accepting long before Granian's own limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FILES
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    fits = soft - min(RESERVED_FILES, soft // 4)
    if fits < wanted:
        log.warning(
            "the open-file limit lowers the connection limit",
            extra={"max_connections": wanted, "allowed": fits, "open_file_limit": soft},
        )
    return min(wanted, fits)
