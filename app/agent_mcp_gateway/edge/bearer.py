"""The HTTP edge's identity check: bearer credentials and session ownership.

Every request to the MCP endpoint passes here before the SDK sees it. When the rules configure
credentials, a request without a valid one gets 401 with `WWW-Authenticate: Bearer` (pointing to
the RFC 9728 metadata); a valid one becomes the request's principal, which the MCP layer takes
as the caller (and the SDK's session manager as the session's owner). A session id the gateway
holds no record of, or one opened by another agent, is answered as an unknown session (404):
the gateway fails closed rather than adopting a session it cannot vouch for.

Written as ASGI middleware rather than fastmcp's `RequireAuthMiddleware` because whether
credentials are required follows the rules file and changes on reload.
"""

from __future__ import annotations

import logging
from typing import Any

from fastmcp.server.auth import AccessToken
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway.access.credentials import PRINCIPAL_SCOPE_KEY, Principal
from agent_mcp_gateway.edge.host import HostNames
from agent_mcp_gateway.edge.middleware import SESSION_HEADER, current_caller, error_response
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.audit import AuditRecord
from agent_mcp_gateway.observe.metrics import ERRORS

log = logging.getLogger("agent_mcp_gateway.http")

METADATA_PATH = "/.well-known/oauth-protected-resource"
MCP_PATHS = frozenset({"/mcp", "/mcp/"})


class BearerAuth:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MCP_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        principal: Principal | None = None
        authenticator = self.gateway.snapshot.authenticator
        if authenticator.enabled:
            scheme, _, credential = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                principal = await authenticator.authenticate(credential.strip())
            if principal is None:
                await self._unauthorized(scope, receive, send, presented=bool(credential.strip()))
                return
            scope[PRINCIPAL_SCOPE_KEY] = principal
            # The SDK's session manager compares this with the session's creator on every request.
            token = AccessToken(token=principal.fingerprint or "", client_id=principal.agent_id, scopes=[])
            scope["user"] = AuthenticatedUser(token)
            scope["auth"] = AuthCredentials([])
            current_caller().principal = principal
        session_id = headers.get(SESSION_HEADER)
        if session_id is not None and not self._may_use_session(session_id, principal):
            current_caller().session_refused = True
            await error_response(404, "Session not found; initialize a new session.", "SESSION_NOT_FOUND")(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    def _may_use_session(self, session_id: str, principal: Principal | None) -> bool:
        record = self.gateway.sessions.get(session_id)
        if record is None:
            return False
        if principal is None or record.agent_id is None:
            return True
        if record.agent_id != principal.agent_id:
            log.warning(
                "session refused: opened by another agent",
                extra={"session_agent": record.agent_id, "agent_id": principal.agent_id},
            )
            return False
        return True

    async def _unauthorized(self, scope: Scope, receive: Receive, send: Send, presented: bool) -> None:
        caller = current_caller()
        ERRORS.labels("UNAUTHENTICATED").inc()
        self.gateway.audit.write(
            AuditRecord(
                agent_id=None,
                operation=caller.method or "http",
                server=None,
                tool=None,
                decision="DENY",
                rule="authentication",
                error_code="UNAUTHENTICATED",
                latency_ms=0.0,
                session_id=caller.session_id,
                request_id=logs.request_id.get(),
                auth="none" if not presented else "invalid",
                claimed_agent_id=caller.agent_id,
            )
        )
        message = (
            "The bearer credential is not valid for this gateway."
            if presented
            else "Authentication required: send 'Authorization: Bearer <token>'."
        )
        response = error_response(401, message, "UNAUTHENTICATED")
        challenge = 'Bearer realm="agent-mcp-gateway"'
        base = HostNames.of(self.gateway.settings).public_base(scope, self.gateway.settings.public_url)
        if base is not None:  # a spoofed Host must not point clients at another metadata document
            challenge += f', resource_metadata="{base}{METADATA_PATH}/mcp"'
        if presented:
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
        await response(scope, receive, send)


def protected_resource_metadata(gateway: Gateway) -> Any:
    """The RFC 9728 document, served while credentials are required."""

    async def endpoint(request: Request) -> JSONResponse:
        authenticator = gateway.snapshot.authenticator
        if not authenticator.enabled:
            return JSONResponse({"error": "this gateway does not require credentials"}, 404)
        base = HostNames.of(gateway.settings).public_base(request.scope, gateway.settings.public_url)
        if base is None:
            message = "set GATEWAY_PUBLIC_URL (or GATEWAY_ALLOWED_HOSTS) to publish this gateway's metadata"
            return JSONResponse({"error": message}, 404)
        body: dict[str, Any] = {
            "resource": f"{base}/mcp",
            "bearer_methods_supported": ["header"],
            "resource_name": "agent-mcp-gateway",
        }
        if authenticator.authorization_servers:
            body["authorization_servers"] = list(authenticator.authorization_servers)
        return JSONResponse(body)

    return endpoint
