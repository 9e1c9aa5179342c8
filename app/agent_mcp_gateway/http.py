"""The HTTP service: the MCP endpoint plus /health, /ready, /metrics and the RFC 9728
metadata, served by Granian.

Wiring only: the edge middlewares come from `edge.py` and `bearer.py`, CORS from Starlette, the
Streamable HTTP transport and its sessions from the SDK via fastmcp's `http_app`.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.http import StreamableHTTPASGIApp
from mcp.server.transport_security import RequestBodyLimitMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import __version__, tracing
from .bearer import METADATA_PATH, BearerAuth, protected_resource_metadata
from .drain import CLOSE_SECONDS, Drain
from .edge import JsonOnly, OriginGuard, RequestBody, RequestContext, RootAlias
from .gateway import Gateway
from .logs import setup_logging
from .metrics import REGISTRY
from .serve import load_config
from .server import build_server
from .settings import Settings, load_settings

log = logging.getLogger("agent_mcp_gateway.http")

RESERVED_FILES = 1024  # descriptors kept for downstream pipes, logs and the audit file (at most a quarter)


def create_app(gateway: Gateway | None = None) -> Starlette:
    """The ASGI application (Granian calls this as a factory in its worker)."""
    if gateway is None:
        settings = load_settings()
        setup_logging(settings.log_level, settings.log_format)
        tracing.setup(settings)
        gateway = Gateway(load_config(settings), settings)
    settings = gateway.settings
    app: Starlette | None = None

    def raise_sdk_body_limit() -> None:
        if app is not None:
            _apply_body_limit(app, settings.max_body_bytes)

    mcp = build_server(gateway, on_start=raise_sdk_body_limit)
    _add_routes(mcp, gateway)
    app = mcp.http_app(
        path="/mcp",
        session_idle_timeout=settings.session_ttl,
        middleware=[
            *([Middleware(tracing.TraceContext)] if tracing.enabled() else []),
            Middleware(RequestContext, sessions=gateway.sessions),
            Middleware(RootAlias),
            Middleware(
                OriginGuard,
                allowed=settings.allowed_origins + settings.cors_origins,
                local_bind=settings.loopback_bind,
            ),
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Mcp-Session-Id", "Retry-After", "X-Request-Id", "WWW-Authenticate"],
            ),
            Middleware(RequestBody, max_bytes=settings.max_body_bytes, seconds=settings.body_timeout),
            Middleware(Drain, grace=settings.shutdown_grace),
            Middleware(BearerAuth, gateway=gateway),
            Middleware(JsonOnly),
        ],
    )
    return app


def _apply_body_limit(app: Starlette, max_bytes: int) -> None:
    """Make `GATEWAY_MAX_BODY_BYTES` the SDK's limit too, above or below its 4 MiB default.

    fastmcp 4.1.2 creates the SDK's session manager without passing a body limit; the manager
    wraps its handler in the SDK's public `RequestBodyLimitMiddleware`, whose limit is set here
    once the manager exists (this runs inside its lifespan).
    """
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, StreamableHTTPASGIApp) and endpoint.session_manager is not None:
            manager = endpoint.session_manager
            manager.max_request_body_size = max_bytes
            if isinstance(manager.asgi_app, RequestBodyLimitMiddleware):
                manager.asgi_app.max_body_size = max_bytes


def _add_routes(mcp: FastMCP, gateway: Gateway) -> None:
    @mcp.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "healthy",
                "service": "agent-mcp-gateway",
                "version": __version__,
                "uptime_seconds": round(time.time() - gateway.started_at, 3),
            }
        )

    @mcp.custom_route("/ready", methods=["GET"])
    async def ready(request: Request) -> JSONResponse:
        servers = {server.name: server.status() for server in gateway.pool}
        authenticator = gateway.snapshot.authenticator
        auth: dict[str, Any] = {"credentials_required": authenticator.enabled}
        warning = gateway.claims_warning
        if warning is not None:
            auth["warning"] = warning
        body = {
            "status": "ready" if gateway.ready else "starting",
            "servers": servers,
            "auth": auth,
            # Informational: a Redis fallback still serves (with per-process limits), so stays 200.
            "rate_limits": gateway.rate_limits.status(),
        }
        return JSONResponse(body, status_code=200 if gateway.ready else 503)

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(request: Request) -> Response:
        wants_json = request.query_params.get("format") == "json" or request.headers.get(
            "accept", ""
        ).startswith("application/json")
        if wants_json:
            return JSONResponse(_metrics_summary())
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    metadata = protected_resource_metadata(gateway)
    mcp.custom_route(METADATA_PATH, methods=["GET"])(metadata)
    mcp.custom_route(f"{METADATA_PATH}/mcp", methods=["GET"])(metadata)


def _metrics_summary() -> dict[str, Any]:
    """The gateway's own series as JSON, for humans and scripts without a Prometheus parser."""
    summary: dict[str, Any] = {"timestamp": time.time()}
    for family in REGISTRY.collect():
        if not family.name.startswith("gateway_"):
            continue
        summary[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "samples": [
                {"name": sample.name, "labels": sample.labels, "value": sample.value}
                for sample in family.samples
                if not sample.name.endswith("_created")
            ],
        }
    return summary


def run_http(settings: Settings) -> int:
    """Serve with Granian: one worker, because session-era MCP sessions live in its memory."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    load_config(settings)  # fail fast, in this process, before a worker is spawned
    log.info("serving", extra={"url": f"http://{settings.http_host}:{settings.http_port}/mcp"})
    server = Granian(
        "agent_mcp_gateway.http:create_app",
        factory=True,
        address=settings.http_host,
        port=settings.http_port,
        interface=Interfaces.ASGI,
        # HTTP/1.1 only: in its auto mode Granian waits, with no timeout, to learn whether a new
        # connection speaks HTTP/2, so one that sent nothing held its slot for good.
        http=HTTPModes.http1,
        workers=1,
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
