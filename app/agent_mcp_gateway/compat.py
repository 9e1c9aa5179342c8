"""Every reach into fastmcp 4.1.2, the MCP SDK 2, aiohttp and httpx2 beyond their documented APIs.

Each seam is a private attribute, an undocumented class or helper, or an attribute set on a
library object after it was built. They live here, each with the reason it is needed, so that
upgrading a pinned dependency means reading one module, and `tests/unit/test_compat.py` (which
asserts that each seam still exists and still behaves as relied on) fails in one place when
one is gone.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore2
import httpx2
import mcp_types as mt
from aiohttp.helpers import get_env_proxy_for_url
from fastmcp import FastMCP
from fastmcp.server.auth import AccessToken
from fastmcp.server.context import reset_transport, set_transport
from fastmcp.server.dependencies import bind_request_context
from fastmcp.server.http import StreamableHTTPASGIApp
from mcp import ClientSession
from mcp.client._input_required import InputRequiredRoundsExceededError, run_input_required_driver
from mcp.client.auth import OAuthFlowError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.caching import CacheHint, validate_cache_hints
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared._context_streams import create_context_streams
from mcp.shared.dispatcher import coerce_request_id
from starlette.authentication import AuthCredentials
from starlette.routing import BaseRoute
from starlette.types import Scope

__all__ = [
    "InputRequiredRoundsExceededError",
    "TokenExchangeProvider",
    "add_request_handler",
    "bind_request_context",  # runs a low-level handler with fastmcp's request context bound
    "coerce_request_id",  # the SDK's own key for pending requests, so ids match the session's
    "create_context_streams",  # the SDK's streams that carry each message's context
    "era_envelope",
    "get_env_proxy_for_url",  # aiohttp's reading of HTTP(S)_PROXY / NO_PROXY for one URL
    "in_flight",
    "live_session",
    "mark_session_owner",
    "route_tool_input_schema",
    "run_input_required_driver",  # the SDK client's loop over a 2026-07-28 call's rounds
    "run_stdio",
    "session_manager",
    "set_body_limit",
    "set_cache_hints",
    "set_network_backend",
]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a grant's name)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


class TokenExchangeProvider(ClientCredentialsOAuthProvider):
    """The SDK's client credentials provider whose token request is an RFC 8693 token exchange:
    the agent's own inbound token is the `subject_token`, the gateway's client authenticates.

    The seam is `_perform_authorization`, the hook the SDK's own grant extensions override: the
    request the client credentials grant would send (built after the issuer check, with the
    client's authentication, the resource and the scope) becomes an exchange of `subject()`.
    """

    def __init__(self, *args: Any, subject: Callable[[], str | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subject = subject

    async def _perform_authorization(self) -> httpx2.Request:
        request = await super()._perform_authorization()
        subject = self._subject()
        if subject is None:
            raise OAuthFlowError("no token of the agent's to exchange (the agent is not JWT-authenticated)")
        form = dict(httpx2.QueryParams(request.content.decode()))
        form |= {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        return httpx2.Request("POST", request.url, data=form, headers=headers)


def _low_level(mcp: FastMCP) -> Server[Any]:
    """fastmcp's SDK server (a private attribute): the only way to register handlers for
    requests fastmcp does not route (`resources/subscribe`) or to answer the SDK's hooks."""
    server: Server[Any] = mcp._mcp_server
    return server


def route_tool_input_schema(mcp: FastMCP, schema: Callable[[str], Mapping[str, Any] | None]) -> None:
    """Answer the SDK's per-call input-schema lookup (for `Mcp-Param-*` headers) directly; the
    SDK's default lists every tool on every call. fastmcp exposes no hook, so the SDK server's
    constructor argument is set after the fact."""
    _low_level(mcp).get_tool_input_schema = schema


def set_cache_hints(mcp: FastMCP, hints: Mapping[str, CacheHint]) -> None:
    """Per-method `ttlMs`/`cacheScope` for 2026-07-28 results (filled by the SDK's runner where a
    result sets none): fastmcp takes one hint for every cacheable method, `resources/read`
    included, whose freshness only the downstream knows; the SDK server takes one per method."""
    _low_level(mcp).cache_hints = validate_cache_hints(hints)


def add_request_handler(
    mcp: FastMCP, method: str, params: type[Any], handler: Callable[[Any, Any], Awaitable[Any]]
) -> None:
    """Serve `method` on fastmcp's SDK server (fastmcp has no hook for it, and adding the
    handler makes the SDK advertise the matching capability)."""
    _low_level(mcp).add_request_handler(method, params, handler)


def era_envelope(
    session: ClientSession, method: str, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The params and HTTP headers a request goes with in the era `session` negotiated, as the
    SDK session stamps its own (its private `_stamp`, rebound at negotiation): on 2026-07-28
    the protocol version, client info and capabilities in `_meta` and the `Mcp-Method`,
    `Mcp-Name` and `Mcp-Param-*` headers; on the handshake era the `Mcp-Protocol-Version` header.
    The gateway's own requests (`downstream.rpc`) must speak the era as the session does."""
    given: dict[str, Any] = dict(params.get("_meta") or {})
    data: dict[str, Any] = {"method": method, "params": {**params, "_meta": dict(given)}}
    options: dict[str, Any] = {}
    session._stamp(data, options)  # type: ignore[arg-type]  # CallOptions is a TypedDict of these keys
    stamped: dict[str, Any] = data["params"]
    # A call passed through for a 2026-07-28 client declares that client's capabilities: the
    # server's questions go to it, so it asks only what that client can answer.
    if mt.CLIENT_CAPABILITIES_META_KEY in given and mt.CLIENT_CAPABILITIES_META_KEY in stamped["_meta"]:
        stamped["_meta"][mt.CLIENT_CAPABILITIES_META_KEY] = given[mt.CLIENT_CAPABILITIES_META_KEY]
    if not stamped["_meta"]:
        del stamped["_meta"]
    return stamped, dict(options.get("headers") or {})


def mark_session_owner(scope: Scope, agent_id: str, fingerprint: str | None) -> None:
    """Tell the SDK's session manager who the request is from: it compares `scope["user"]`'s
    access token with the session's creator on every request (undocumented), which keeps a
    session with the agent that opened it even below the gateway's own check."""
    token = AccessToken(token=fingerprint or "", client_id=agent_id, scopes=[])
    scope["user"] = AuthenticatedUser(token)
    scope["auth"] = AuthCredentials([])


def set_network_backend(transport: httpx2.AsyncHTTPTransport, backend: httpcore2.AsyncNetworkBackend) -> None:
    """Open `transport`'s connections through `backend`: httpx takes no network backend, its
    connection pool (a private attribute) does, and reads it at each new connection."""
    pool = transport._pool
    assert isinstance(pool, httpcore2.AsyncConnectionPool)
    pool._network_backend = backend


def set_body_limit(routes: list[BaseRoute], max_bytes: int) -> None:
    """Make `max_bytes` the SDK's request body limit too, above or below its 4 MiB default.

    fastmcp 4.1.2 creates the SDK's session manager without passing a body limit; the manager
    (reached through fastmcp's undocumented endpoint class) wraps its handler in the SDK's
    `RequestBodyLimitMiddleware`, whose limit is set here once the manager exists.
    """
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, StreamableHTTPASGIApp) and endpoint.session_manager is not None:
            manager = endpoint.session_manager
            manager.max_request_body_size = max_bytes
            if isinstance(manager.asgi_app, RequestBodyLimitMiddleware):
                manager.asgi_app.max_body_size = max_bytes


async def run_stdio(server: FastMCP, stdin: Any, stdout: Any) -> None:
    """fastmcp's `run_stdio_async` on the stdio streams given (the SDK's `stdio_server` takes
    them; fastmcp always opens it on the process's own, through worker threads): its lifespan,
    the "stdio" transport its context reports, and its low-level server (`_mcp_server`)."""
    token = set_transport("stdio")
    try:
        async with server._lifespan_manager(), stdio_server(stdin, stdout) as (read_stream, write_stream):
            low_level = server._mcp_server
            await low_level.run(read_stream, write_stream, low_level.create_initialization_options())
    finally:
        reset_transport(token)


def session_manager(routes: list[BaseRoute]) -> StreamableHTTPSessionManager | None:
    """The SDK's session manager behind fastmcp's MCP route (its undocumented endpoint class),
    for the call lane's look-up of a handshake-era session."""
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, StreamableHTTPASGIApp) and endpoint.session_manager is not None:
            return endpoint.session_manager
    return None


def live_session(
    manager: StreamableHTTPSessionManager, session_id: str, scope: Scope
) -> StreamableHTTPServerTransport | None:
    """The transport of an open session `scope`'s caller may use, or None where the SDK would
    answer otherwise (unknown, ended, idle-expired, or another credential's: its private
    `_server_instances` and `_session_owners`, compared as its `_handle_stateful_request` does)."""
    transport = manager._server_instances.get(session_id)
    if transport is None or transport.is_terminated:
        return None
    user = scope.get("user")
    requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
    if requestor != manager._session_owners.get(session_id):
        return None
    idle = transport.idle_scope
    if idle is not None and idle.cancel_called:
        return None
    return transport


@contextmanager
def in_flight(transport: StreamableHTTPServerTransport) -> Iterator[None]:
    """A request served beside the transport holds its session as one served by it does: the
    idle countdown stops while any is in flight (the transport's private `_requests_in_flight`
    and `_idle_timeout`, kept as its `handle_request` keeps them)."""
    idle, timeout = transport.idle_scope, transport._idle_timeout
    if idle is None or timeout is None:
        yield
        return
    transport._requests_in_flight += 1
    idle.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle.deadline = anyio.current_time() + timeout
