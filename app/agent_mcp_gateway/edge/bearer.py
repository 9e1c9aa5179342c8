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

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway import compat
from agent_mcp_gateway.access.credentials import Principal
from agent_mcp_gateway.access.identity import RequestFacts, check_session, facts_of
from agent_mcp_gateway.edge.host import HostNames
from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.errors import InvalidAgentId
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.record import Recorder
from agent_mcp_gateway.protocol import MCP_PATHS, METADATA_PATH

log = logging.getLogger("agent_mcp_gateway.http")


class BearerAuth:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.recorder = Recorder(gateway.audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MCP_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        facts = facts_of(scope)
        principal: Principal | None = None
        authenticator = self.gateway.snapshot.authenticator
        if authenticator.enabled:
            scheme, _, credential = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                principal = await authenticator.authenticate(credential.strip())
            if principal is None:
                await self._unauthorized(scope, receive, send, presented=bool(credential.strip()))
                return
            compat.mark_session_owner(scope, principal.agent_id, principal.fingerprint)
            facts.principal = principal
            if principal.method == "jwt":
                self.gateway.subject_tokens.remember(
                    principal.agent_id, credential.strip(), principal.expires_at
                )
        if facts.session_id is not None and not self._may_use_session(facts, principal):
            facts.session_refused = True
            refusal = error_response(
                scope, 404, "Session not found; initialize a new session.", "SESSION_NOT_FOUND"
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _may_use_session(self, facts: RequestFacts, principal: Principal | None) -> bool:
        """Whether the gateway holds the session and (with a credential) it is the credential's
        agent's, by `identity.check_session`, the rule the MCP layer binds claims by; the record
        goes into the facts so no layer below looks it up again."""
        assert facts.session_id is not None
        record = facts.session = self.gateway.sessions.get(facts.session_id)
        if record is None:
            return False
        if principal is None:
            return True
        try:
            check_session(record, principal.agent_id)
        except InvalidAgentId:
            log.warning(
                "session refused: opened by another agent",
                extra={"session_agent": record.agent_id, "agent_id": principal.agent_id},
            )
            return False
        return True

    async def _unauthorized(self, scope: Scope, receive: Receive, send: Send, presented: bool) -> None:
        facts = facts_of(scope)
        self.recorder.unauthenticated(
            facts.method, facts.session_id, logs.request_id.get(), facts.claimed_agent, presented
        )
        message = (
            "The bearer credential is not valid for this gateway."
            if presented
            else "Authentication required: send 'Authorization: Bearer <token>'."
        )
        response = error_response(scope, 401, message, "UNAUTHENTICATED")
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
