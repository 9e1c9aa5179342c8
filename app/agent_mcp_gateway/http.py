"""The HTTP service: the MCP endpoint plus /health, /ready and /metrics, served by Granian.

Wiring only: the edge middlewares come from `edge.py`, CORS from Starlette, rate limits from
slowapi, the Streamable HTTP transport and its sessions from the SDK via fastmcp.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from slowapi.middleware import SlowAPIMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__, logs
from .audit import AuditRecord
from .edge import (
    JsonOnly,
    OriginGuard,
    RequestBody,
    RequestContext,
    current_caller,
    error_response,
    is_loopback_host,
)
from .gateway import Gateway
from .metrics import RATE_LIMITED, REGISTRY, bounded
from .serve import load_config, load_gateway
from .server import build_server

log = logging.getLogger("agent_mcp_gateway.http")

DEFAULT_RATE_LIMIT = "600/minute"
RATE_LIMITED_CODE = -32005  # beside the gateway's -32000..-32004; the HTTP status is 429
DEFAULT_MAX_BODY = 4 * 2**20  # the SDK's own cap; refused here first with a clear 413


def _csv(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def create_app(gateway: Gateway | None = None) -> Starlette:
    """The ASGI application (Granian calls this as a factory in its worker)."""
    logs.setup_logging()
    gateway = gateway or load_gateway()
    mcp = build_server(gateway)
    host = os.environ.get("GATEWAY_HTTP_HOST", "127.0.0.1")
    cors_origins = _csv("GATEWAY_CORS_ORIGINS")
    allowed_origins = _csv("GATEWAY_ALLOWED_ORIGINS") + cors_origins
    max_body = int(os.environ.get("GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY))
    limiter = _limiter(gateway)

    app = mcp.http_app(
        path="/mcp",
        session_idle_timeout=gateway.settings.session_ttl,
        middleware=[
            Middleware(RequestContext, sessions=gateway.sessions),
            Middleware(OriginGuard, allowed=allowed_origins, local_bind=is_loopback_host(host)),
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Mcp-Session-Id", "Retry-After", "X-Request-Id"],
            ),
            Middleware(RequestBody, max_bytes=max_body),
            Middleware(SlowAPIMiddleware),
            Middleware(JsonOnly),
        ],
    )
    mcp_endpoint = next(route.endpoint for route in app.routes if getattr(route, "path", None) == "/mcp")
    # slowapi names routes by their endpoint's __name__; the SDK's ASGI app has none.
    mcp_endpoint.__name__ = "mcp_endpoint"
    # The milestone document's example posts to the server root, so / serves MCP too.
    app.router.routes.append(Route("/", endpoint=mcp_endpoint, methods=["GET", "POST", "DELETE"]))
    app.router.routes.extend(_routes(gateway, limiter))
    app.state.limiter = limiter
    app.state.gateway = gateway
    app.exception_handlers[RateLimitExceeded] = _rate_limited(gateway)
    app.router.lifespan_context = _with_session_sweeper(app.router.lifespan_context, gateway)
    return app


def _limiter(gateway: Gateway) -> Limiter:
    default = os.environ.get("GATEWAY_RATE_LIMIT", DEFAULT_RATE_LIMIT)

    def subject(request: Request) -> str:
        agent = _caller_agent(gateway)
        return f"agent:{agent}" if agent else f"client:{current_caller().client}"

    def limit_for_caller() -> str:
        agent = _caller_agent(gateway)
        rules = gateway.config.rules.agents.get(agent) if agent else None
        return (rules.rate_limit if rules and rules.rate_limit else None) or default

    return Limiter(key_func=subject, default_limits=[limit_for_caller], storage_uri="memory://")


def _caller_agent(gateway: Gateway) -> str | None:
    """The configured agent a request is from: its own id, else the one its session is bound to."""
    current = current_caller()
    agent = current.agent_id
    if not agent and current.session_id:
        record = gateway.sessions.get(current.session_id)
        agent = record.agent_id if record else None
    return agent if agent in gateway.config.rules.agents else None


def _rate_limited(gateway: Gateway) -> Callable[[Request, RateLimitExceeded], Response]:
    def handler(request: Request, exc: RateLimitExceeded) -> Response:
        current = current_caller()
        agent = _caller_agent(gateway)
        RATE_LIMITED.labels(bounded(agent, gateway.config.rules.agents)).inc()
        gateway.audit.write(
            AuditRecord(
                agent_id=agent or current.agent_id,
                operation=current.method or "http",
                server=None,
                tool=None,
                decision="DENY",
                rule="rate_limit",
                error_code="RATE_LIMITED",
                latency_ms=0.0,
                session_id=current.session_id,
                request_id=logs.request_id.get(),
            )
        )
        retry_after = _seconds_until_reset(request)
        response = error_response(
            429,
            f"Rate limit exceeded ({exc.detail}); retry in {retry_after} s.",
            "RATE_LIMITED",
            code=RATE_LIMITED_CODE,
            retry_after=retry_after,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    return handler


def _seconds_until_reset(request: Request) -> int:
    """When the window of the limit just hit resets (slowapi records which limit it was)."""
    item, identifiers = request.state.view_rate_limit
    stats = request.app.state.limiter.limiter.get_window_stats(item, *identifiers)
    return max(1, math.ceil(stats.reset_time - time.time()))


def _routes(gateway: Gateway, limiter: Limiter) -> list[Route]:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "healthy",
                "service": "agent-mcp-gateway",
                "version": __version__,
                "uptime_seconds": round(time.time() - gateway.started_at, 3),
            }
        )

    async def ready(request: Request) -> JSONResponse:
        servers = {server.name: server.status() for server in gateway.pool}
        body = {"status": "ready" if gateway.ready else "starting", "servers": servers}
        return JSONResponse(body, status_code=200 if gateway.ready else 503)

    async def metrics(request: Request) -> Response:
        wants_json = request.query_params.get("format") == "json" or request.headers.get(
            "accept", ""
        ).startswith("application/json")
        if wants_json:
            return JSONResponse(_metrics_summary())
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for endpoint in (health, ready, metrics):
        limiter.exempt(endpoint)
    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


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


def _with_session_sweeper(lifespan: Any, gateway: Gateway) -> Any:
    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[Any]:
        async def sweep() -> None:
            interval = max(1.0, min(60.0, gateway.settings.session_ttl / 4))
            while True:
                await asyncio.sleep(interval)
                gateway.sessions.expire()

        async with lifespan(app) as state:
            task = asyncio.create_task(sweep(), name="session-sweeper")
            try:
                yield state
            finally:
                task.cancel()

    return run


def run_http() -> int:
    """Serve with Granian: one worker, because session-era MCP sessions live in its memory."""
    from granian import Granian
    from granian.constants import Interfaces

    host = os.environ.get("GATEWAY_HTTP_HOST", "127.0.0.1")
    port = int(os.environ.get("GATEWAY_HTTP_PORT", "8000"))
    load_config()  # fail fast, in this process, on a bad configuration
    log.info("serving", extra={"url": f"http://{host}:{port}/mcp"})
    server = Granian(
        "agent_mcp_gateway.http:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        log_dictconfig={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"_granian": {"level": "WARNING", "propagate": True}},
        },
        workers_kill_timeout=int(os.environ.get("GATEWAY_SHUTDOWN_GRACE", "30")),
    )
    server.serve()
    return 0
