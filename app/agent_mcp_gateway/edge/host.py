"""The `Host` a request names: refused when foreign (DNS rebinding), trusted only when known.

A browser tricked by DNS rebinding sends the attacker's host name in `Host`; a loopback bind
knows its only names (localhost and loopback addresses), and an operator can list the names of
any other bind in `GATEWAY_ALLOWED_HOSTS`. On a non-loopback bind with no list the gateway cannot
tell a foreign name from its own: every `Host` is served (Prometheus scrapes containers by
service name), but none is trusted to name the gateway in its RFC 9728 metadata or its 401
challenge; `GATEWAY_PUBLIC_URL` does that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.settings import Settings, is_loopback_host

log = logging.getLogger("agent_mcp_gateway.http")


class HostNames:
    """Which `Host` values name this gateway: the configured list, else loopback names on a
    loopback bind, else unknown (None)."""

    def __init__(self, allowed: Iterable[str], local_bind: bool) -> None:
        self.allowed = frozenset(host.lower() for host in allowed)
        self.local_bind = local_bind

    @classmethod
    def of(cls, settings: Settings) -> HostNames:
        return cls(settings.allowed_hosts, settings.loopback_bind)

    def verdict(self, host: str) -> bool | None:
        """True: one of the gateway's names; False: foreign; None: cannot be told."""
        host = host.lower()
        name = _hostname(host)
        if self.allowed:
            return "*" in self.allowed or host in self.allowed or name in self.allowed
        if self.local_bind:
            return is_loopback_host(name)
        return None

    def public_base(self, scope: Scope, configured: str | None) -> str | None:
        """The gateway's external base URL: the configured one, else the one this request used
        when its `Host` is known to name the gateway, else None."""
        if configured:
            return configured.rstrip("/")
        if self.verdict(Headers(scope=scope).get("host", "")):
            return str(Request(scope).base_url).rstrip("/")
        return None


def _hostname(host: str) -> str:
    """`host` without its port (an IPv6 literal keeps its brackets' content)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class HostGuard:
    """403 for a request whose `Host` is known to be foreign."""

    def __init__(self, app: ASGIApp, names: HostNames) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if self.names.verdict(host) is False:
                log.warning("host refused", extra={"host": host[:200]})
                await error_response(scope, 403, "Host not allowed.", "HOST_NOT_ALLOWED")(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
