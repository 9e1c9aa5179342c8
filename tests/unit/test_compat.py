"""Each seam in `compat.py` still exists and still does what the gateway relies on.

When a pinned dependency (fastmcp, the MCP SDK, aiohttp) is upgraded, a seam that moved fails
here, by name, rather than somewhere deep in a gateway test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import mcp_types as mt
import yarl
from fastmcp import Context, FastMCP
from fastmcp.server.http import StreamableHTTPASGIApp
from fastmcp.server.middleware import MiddlewareContext
from mcp import ClientSession
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.caching import CacheHint, apply_cache_hint
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.routing import Route

from agent_mcp_gateway import compat
from agent_mcp_gateway.server.call import Planned, planned


def test_fastmcp_keeps_its_sdk_server_in_a_private_attribute() -> None:
    mcp = FastMCP("compat")
    server = mcp._mcp_server
    assert isinstance(server, Server)
    assert hasattr(server, "get_tool_input_schema")


def test_the_sdk_input_schema_hook_can_be_routed() -> None:
    mcp = FastMCP("compat")

    def schema(name: str) -> dict[str, Any] | None:
        return {"type": "object"} if name == "known" else None

    compat.route_tool_input_schema(mcp, schema)
    assert mcp._mcp_server.get_tool_input_schema is schema


def test_a_request_handler_can_be_added_to_the_sdk_server() -> None:
    mcp = FastMCP("compat")

    async def handler(ctx: Any, params: mt.SubscribeRequestParams) -> mt.EmptyResult:
        return mt.EmptyResult()

    compat.add_request_handler(mcp, "resources/subscribe", mt.SubscribeRequestParams, handler)
    assert mcp._mcp_server.get_request_handler("resources/subscribe") is not None


def test_cache_hints_are_set_per_method_on_the_sdk_server() -> None:
    mcp = FastMCP("compat")
    hint = CacheHint(ttl_ms=5, scope="private")
    compat.set_cache_hints(mcp, {"tools/list": hint})
    assert mcp._mcp_server.cache_hints == {"tools/list": hint}
    listed = apply_cache_hint(mt.ListToolsResult(tools=[]), mcp._mcp_server.cache_hints["tools/list"])
    assert (listed.ttl_ms, listed.cache_scope) == (5, "private")


def test_the_sdk_body_limit_is_reached_through_fastmcps_endpoint() -> None:
    manager = StreamableHTTPSessionManager(app=Server("compat"))
    assert isinstance(manager.asgi_app, RequestBodyLimitMiddleware)
    route = Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))
    compat.set_body_limit([route], 12345)
    assert manager.max_request_body_size == 12345
    assert manager.asgi_app.max_body_size == 12345


def test_the_session_owner_is_what_the_sdk_compares() -> None:
    scope: dict[str, Any] = {"type": "http"}
    compat.mark_session_owner(scope, "researcher", "sha256:abc")
    assert isinstance(scope["user"], AuthenticatedUser)
    assert authorization_context(scope["user"])["client_id"] == "researcher"
    other: dict[str, Any] = {"type": "http"}
    compat.mark_session_owner(other, "builder", "sha256:abc")
    assert authorization_context(other["user"]) != authorization_context(scope["user"])


async def test_a_session_is_found_and_held_as_the_sdk_does() -> None:
    """The call lane's seams: the SDK manager's sessions and owners, and its transport's idle
    accounting (a request in flight suspends the countdown; the last one restarts it)."""
    manager = StreamableHTTPSessionManager(app=Server("compat"), session_idle_timeout=60)
    assert compat.session_manager([Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))]) is manager
    owner: dict[str, Any] = {"type": "http"}
    compat.mark_session_owner(owner, "researcher", None)
    transport = manager._admit_session(authorization_context(owner["user"]))
    assert transport is not None and transport.mcp_session_id is not None
    session_id = transport.mcp_session_id
    assert compat.live_session(manager, session_id, owner) is transport
    other: dict[str, Any] = {"type": "http"}
    compat.mark_session_owner(other, "builder", None)
    assert compat.live_session(manager, session_id, other) is None
    assert compat.live_session(manager, "unknown", owner) is None
    transport.idle_scope = anyio.CancelScope()  # as `connect()` makes it
    with compat.in_flight(transport):
        assert transport._requests_in_flight == 1 and transport.idle_scope.deadline == float("inf")
    assert transport._requests_in_flight == 0
    assert transport.idle_scope.deadline <= anyio.current_time() + 60
    transport.idle_scope.cancel()
    assert compat.live_session(manager, session_id, owner) is None


def test_context_streams_and_request_ids() -> None:
    async def main() -> None:
        send, receive = compat.create_context_streams[int](1)
        async with send, receive:
            await send.send(7)
            assert await receive.receive() == 7

    anyio.run(main)
    assert compat.coerce_request_id("7") == compat.coerce_request_id(7)


def test_aiohttp_reads_the_proxy_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    proxy, _ = compat.get_env_proxy_for_url(yarl.URL("https://example.com/mcp"))
    assert str(proxy) == "http://proxy.example:3128"


def test_fastmcp_middleware_context_is_a_dataclass_a_planned_call_extends() -> None:
    """The pipeline hands its plan down in a subclass of fastmcp's context: fastmcp must keep
    it a dataclass whose `copy` keeps the subclass."""
    context = MiddlewareContext(message=None, method="tools/call")
    fields = {field.name: getattr(context, field.name) for field in dataclasses.fields(context)}
    call: Any = object()
    extended = Planned(**fields, call=call)
    assert planned(extended.copy(method="tools/call")) is call
    assert planned(context) is None
    assert callable(compat.bind_request_context)


class _NoStorage:
    async def get_tokens(self) -> None:
        return None

    async def set_tokens(self, tokens: Any) -> None:
        return None

    async def get_client_info(self) -> None:
        return None

    async def set_client_info(self, client_info: Any) -> None:
        return None


async def test_the_client_credentials_token_request_becomes_a_token_exchange() -> None:
    from mcp.shared.auth import OAuthMetadata

    provider = compat.TokenExchangeProvider(
        "http://rs.test/mcp",
        _NoStorage(),
        "gw",
        "gw-secret",
        "client_secret_basic",
        "mcp",
        "http://as.test",
        subject=lambda: "the-agents-jwt",
    )
    await provider._initialize()
    provider.context.oauth_metadata = OAuthMetadata.model_validate(
        {
            "issuer": "http://as.test",
            "authorization_endpoint": "http://as.test/auth",
            "token_endpoint": "http://as.test/token",
        }
    )
    request = await provider._perform_authorization()
    form = dict(httpx2.QueryParams(request.content.decode()))
    assert str(request.url) == "http://as.test/token"
    assert form["grant_type"] == compat.TOKEN_EXCHANGE
    assert form["subject_token"] == "the-agents-jwt"
    assert form["subject_token_type"] == compat.ACCESS_TOKEN_TYPE
    assert form["scope"] == "mcp"
    assert request.headers["authorization"].startswith("Basic ")  # the gateway's client authenticates
    assert "gw-secret" not in request.content.decode()


def test_the_sdk_session_stamps_each_request_in_its_negotiated_era() -> None:
    send, receive = anyio.create_memory_object_stream[Any](1)
    session = ClientSession(receive, send, client_info=mt.Implementation(name="gw", version="1"))
    session.adopt(mt.DiscoverResult(supported_versions=["2026-07-28"], capabilities=mt.ServerCapabilities()))
    params, headers = compat.era_envelope(
        session, "tools/call", {"name": "echo", "arguments": {}, "_meta": {"progressToken": "gw-1"}}
    )
    meta = params["_meta"]
    assert meta["progressToken"] == "gw-1"
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert meta["io.modelcontextprotocol/clientInfo"] == {"name": "gw", "version": "1"}
    assert "io.modelcontextprotocol/clientCapabilities" in meta
    assert {key.lower(): value for key, value in headers.items()} == {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }

    session.adopt(
        mt.InitializeResult(
            protocol_version="2025-11-25",
            capabilities=mt.ServerCapabilities(),
            server_info=mt.Implementation(name="s", version="1"),
        )
    )
    params, headers = compat.era_envelope(session, "tools/call", {"name": "echo"})
    assert params == {"name": "echo"}
    assert {key.lower(): value for key, value in headers.items()} == {"mcp-protocol-version": "2025-11-25"}
    send.close()
    receive.close()


async def test_the_sdk_drives_a_calls_rounds_with_answers_and_state() -> None:
    """The gateway answers a 2026-07-28 server's questions for a handshake-era client with the
    SDK client's own loop: each round's questions dispatched, the retry given the answers and
    the state byte for byte, until a final result."""
    asked = mt.ElicitRequest(
        params=mt.ElicitRequestFormParams(message="?", requested_schema={"type": "object"})
    )
    retried: list[tuple[Any, str | None]] = []

    async def dispatch(key: str, request: Any) -> mt.ElicitResult:
        assert (key, request) == ("q", asked)
        return mt.ElicitResult(action="decline")

    async def retry(responses: Any, state: str | None) -> Any:
        retried.append((responses, state))
        if len(retried) == 1:
            return mt.InputRequiredResult(input_requests={"q": asked}, request_state="s2")
        return "done"

    first = mt.InputRequiredResult(input_requests={"q": asked}, request_state="s1")
    assert (
        await compat.run_input_required_driver(first, dispatch=dispatch, retry=retry, max_rounds=3) == "done"
    )
    assert [state for _, state in retried] == ["s1", "s2"]
    assert retried[0][0] == {"q": mt.ElicitResult(action="decline")}


async def test_fastmcp_serves_stdio_on_the_streams_given() -> None:
    """`run_stdio`: fastmcp's lifespan runs, its context reports the stdio transport, and the
    SDK's stdio server reads the lines given and writes its answers to the writer given."""
    lifespan_ran = anyio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncIterator[None]:
        lifespan_ran.set()
        yield

    mcp = FastMCP("compat", lifespan=lifespan)

    @mcp.tool
    def transport(ctx: Context) -> str:
        return str(ctx.transport)

    answered = anyio.Event()
    written: list[dict[str, Any]] = []

    class Writer:
        async def write(self, text: str) -> None:
            written.append(json.loads(text))
            if written[-1].get("id") == 2:
                answered.set()

        async def flush(self) -> None:
            pass

    async def lines() -> AsyncIterator[str]:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        yield json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}) + "\n"
        yield json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n"
        call = {"name": "transport", "arguments": {}}
        yield json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}) + "\n"
        await answered.wait()  # end of input only once the call is answered

    with anyio.fail_after(60):
        await compat.run_stdio(mcp, lines(), Writer())
    assert lifespan_ran.is_set()
    assert [message["id"] for message in written] == [1, 2]
    assert written[1]["result"]["content"][0]["text"] == "stdio"
