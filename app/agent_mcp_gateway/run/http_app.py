"""The HTTP service: the MCP endpoint plus /health, /ready, /metrics and the RFC 9728
metadata, served by Granian.

Wiring only: the edge middlewares come from `edge/`, CORS from Starlette, the
Streamable HTTP transport and its sessions from the SDK via fastmcp's `http_app`.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastmcp import FastMCP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent_mcp_gateway import __version__, compat
from agent_mcp_gateway.edge.admission import OriginGuard, RootAlias
from agent_mcp_gateway.edge.bearer import BearerAuth, protected_resource_metadata
from agent_mcp_gateway.edge.body import RequestBody
from agent_mcp_gateway.edge.context import RequestContext
from agent_mcp_gateway.edge.drain import Drain
from agent_mcp_gateway.edge.host import HostGuard, HostNames
from agent_mcp_gateway.edge.json_only import JsonOnly
from agent_mcp_gateway.edge.quota import SessionQuota
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.observe.metrics import REGISTRY
from agent_mcp_gateway.protocol import EXPOSED_HEADERS, MCP_PATH, METADATA_PATH
from agent_mcp_gateway.server.build import build_server
from agent_mcp_gateway.server.lane import CallLane
from agent_mcp_gateway.sessions.events import BoundedEventStore

log = logging.getLogger("agent_mcp_gateway.http")

SSE_RETRY_MS = 1_000  # the `retry` a stream's priming event gives: reconnect after a second


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI application: the edge middlewares around the MCP server, and the service routes."""
    settings = gateway.settings
    app: Starlette | None = None

    def raise_sdk_body_limit() -> None:
        if app is not None:
            compat.set_body_limit(app.routes, settings.max_body_bytes)

    mcp = build_server(gateway, on_start=raise_sdk_body_limit)
    _add_routes(mcp, gateway)
    app = mcp.http_app(
        path=MCP_PATH,
        session_idle_timeout=settings.session_ttl,
        event_store=BoundedEventStore(settings.event_store_events),
        retry_interval=SSE_RETRY_MS,
        middleware=[
            *([Middleware(tracing.TraceContext)] if tracing.enabled() else []),
            Middleware(RequestContext, sessions=gateway.sessions),
            Middleware(RootAlias),
            Middleware(HostGuard, names=HostNames.of(settings)),
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
                expose_headers=list(EXPOSED_HEADERS),
            ),
            Middleware(RequestBody, max_bytes=settings.max_body_bytes, seconds=settings.body_timeout),
            Middleware(Drain, grace=settings.shutdown_grace),
            Middleware(BearerAuth, gateway=gateway),
            Middleware(SessionQuota, gateway=gateway),
            Middleware(JsonOnly),
            Middleware(
                CallLane, gateway=gateway, manager=lambda: compat.session_manager(app.routes if app else [])
            ),
        ],
    )
    return app


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

    metrics_token = gateway.settings.metrics_token

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(request: Request) -> Response:
        if metrics_token is not None and not _bearer_matches(request, metrics_token.get_secret_value()):
            return JSONResponse(
                {"error": "metrics need 'Authorization: Bearer <GATEWAY_METRICS_TOKEN>'"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        wants_json = request.query_params.get("format") == "json" or request.headers.get(
            "accept", ""
        ).startswith("application/json")
        if wants_json:
            return JSONResponse(_metrics_summary())
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    metadata = protected_resource_metadata(gateway)
    mcp.custom_route(METADATA_PATH, methods=["GET"])(metadata)
    mcp.custom_route(f"{METADATA_PATH}/mcp", methods=["GET"])(metadata)


def _bearer_matches(request: Request, token: str) -> bool:
    """Whether the request presents `token` as its bearer credential (compared in constant time:
    /metrics names every configured agent and server)."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), token.encode())


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
