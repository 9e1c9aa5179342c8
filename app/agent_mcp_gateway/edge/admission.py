"""Which requests reach the MCP endpoint at all: the root path served as `/mcp`
(`RootAlias`) and browser origins checked (`OriginGuard`, the DNS-rebinding defence)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.protocol import (
    MCP_PATH,
)
from agent_mcp_gateway.settings import is_loopback_host

log = logging.getLogger("agent_mcp_gateway.http")


class RootAlias:
    """Serve MCP at `/` as well as `/mcp`: the milestone document's clients post to the root."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/":
            scope = {**scope, "path": MCP_PATH, "raw_path": MCP_PATH.encode()}
        await self.app(scope, receive, send)


class OriginGuard:
    """Refuse browser requests from origins that are not allowed (DNS-rebinding defence).

    Written here rather than using fastmcp's Host/Origin guard because that guard also rejects
    Host headers it does not know (421), which breaks Prometheus scraping a container by its
    service name; the specification asks only for Origin checks.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str], local_bind: bool) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allowed}
        self.local_bind = local_bind

    def allows(self, origin: str) -> bool:
        normalized = origin.rstrip("/").lower()
        if normalized in self.allowed or "*" in self.allowed:
            return True
        if self.local_bind and not self.allowed:
            parts = urlsplit(normalized)
            return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname or "")
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = Headers(scope=scope).get("origin")
            if origin is not None and not self.allows(origin):
                log.warning("origin refused", extra={"origin": origin[:200]})
                refusal = error_response(scope, 403, "Origin not allowed.", "ORIGIN_NOT_ALLOWED")
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
