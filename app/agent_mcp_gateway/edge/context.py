"""Request ids, access logs, HTTP metrics and the session registry, for every request
(`RequestContext`, the outermost middleware); what it learns of the caller goes into the
request's `RequestFacts` in the ASGI scope (`access.identity`), which every layer below reads."""

from __future__ import annotations

import logging
import re
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_mcp_gateway.access.identity import FACTS_SCOPE_KEY, RequestFacts
from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.metrics import http_series
from agent_mcp_gateway.protocol import (
    INTERNAL_ERROR,
    MCP_PATH,
    MCP_PATHS,
    METADATA_PATH,
    REQUEST_ID_HEADER,
    SESSION_HEADER,
)
from agent_mcp_gateway.sessions.registry import SessionRegistry

log = logging.getLogger("agent_mcp_gateway.http")

KNOWN_ROUTES = {*MCP_PATHS, "/", "/health", "/ready", "/metrics", METADATA_PATH, f"{METADATA_PATH}/mcp"}
KNOWN_METHODS = {"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"}  # bounded labels
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    """Request id, access log, HTTP metrics, the session registry, and a last-resort 500."""

    def __init__(self, app: ASGIApp, sessions: SessionRegistry) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        supplied = headers.get(REQUEST_ID_HEADER, "")
        request_id = supplied if _REQUEST_ID.match(supplied) else logs.new_request_id()
        request_token = logs.request_id.set(request_id)
        session_id = headers.get(SESSION_HEADER)
        client = scope.get("client")
        facts = RequestFacts(session_id=session_id, client=client[0] if client else "unknown")
        scope[FACTS_SCOPE_KEY] = facts
        path = scope["path"]
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        route = path if path in KNOWN_ROUTES else "other"
        route = MCP_PATH if route in ("/", "/mcp/") else route
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                out = MutableHeaders(scope=message)
                out[REQUEST_ID_HEADER] = request_id
                if route == MCP_PATH:
                    self._track_session(facts, method, out.get(SESSION_HEADER), status)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in request", extra={"path": route, "method": method})
            if not response_started:
                status = 500
                await error_response(
                    scope,
                    500,
                    f"Internal error; the gateway's log has request id {request_id}.",
                    "INTERNAL_ERROR",
                    code=INTERNAL_ERROR,
                )(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            count, duration = http_series(route, method, status)
            count.inc()
            if not (route == MCP_PATH and method == "GET"):  # a GET on /mcp is a long-lived stream
                duration.observe(seconds)
            if route != "/metrics" and route != "/health":
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "session_id": session_id,
                    },
                )
            logs.request_id.reset(request_token)

    def _track_session(self, facts: RequestFacts, method: str, issued: str | None, status: int) -> None:
        sent = facts.session_id
        if sent is None:
            if issued is not None and status < 400:
                principal = facts.principal
                record = self.sessions.open(issued, principal.agent_id if principal else None)
                params = facts.message.get("params") if facts.message is not None else None
                declared = params.get("capabilities") if isinstance(params, dict) else None
                if facts.method == "initialize" and isinstance(declared, dict):
                    record.capabilities = declared
        elif facts.session_refused:
            return  # a caller refused a session it does not own must not end it for its owner
        elif method == "DELETE" and status < 300:
            # Only the owner's DELETE (or expiry) ends a session: a 404 also answers an OPTIONS
            # or a GET from anyone who knows the id, which must not end it for its owner.
            self.sessions.close(sent)
        else:
            self.sessions.touch(sent)
