"""Downstream connections: one persistent MCP session per server and owner (`downstream.pool`).

Each session is owned by a supervisor task that connects, keeps the session alive, notices when
it is lost (a failed call, a failed ping, the process exiting) and reconnects with exponential
backoff. Calls never wait for a connection: a server that is not up fails fast with
SERVER_UNAVAILABLE, and so does one whose circuit breaker is open after repeated failures.
stdio servers run in their own process group (`downstream_stdio`), ended as a whole when the
server exits, is closed or the gateway dies (`watchdog`).

What a downstream says is relayed only to the caller it belongs to: its JSON-RPC errors are
retold in a clean sentence (the original goes to the gateway's log). On an isolated session
(one agent's or one client session's) everything the server sends belongs to its owner: during
a call it goes to the calling client, between calls to the owner's client outside any call. On
the shared session only what names its call exactly (progress by token, anything on a call's own
HTTP answer stream) reaches a caller; the rest is dropped and counted (DOWNSTREAM_UNROUTED),
log messages to the gateway's log, because any other client may belong to another agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio
import mcp_types as mt
from fastmcp import Client
from fastmcp.client.messages import MessageHandler
from fastmcp.telemetry import inject_trace_context
from mcp import MCPError
from mcp.client.subscriptions import listen
from mcp_types.methods import is_input_required
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent_mcp_gateway.access.logins import GATEWAY, LoginStore
from agent_mcp_gateway.access.pins import PinStore
from agent_mcp_gateway.config import DownstreamCredentials, Isolation, ServerConfig
from agent_mcp_gateway.downstream import rpc as rpc
from agent_mcp_gateway.downstream.circuit import CircuitBreaker, CircuitOpen
from agent_mcp_gateway.downstream.http import HttpServerTransport, LastGoodResolver
from agent_mcp_gateway.downstream.messages import Relay, current_call
from agent_mcp_gateway.downstream.oauth import AuthorizationFailed, oauth_session
from agent_mcp_gateway.downstream.stdio import StdioServerTransport
from agent_mcp_gateway.downstream.watchdog import Watchdog
from agent_mcp_gateway.errors import (
    DownstreamError,
    GatewayTimeout,
    ResultTooLarge,
    ServerUnavailable,
)
from agent_mcp_gateway.observe import logs, tracing
from agent_mcp_gateway.observe.metrics import (
    DOWNSTREAM_CIRCUIT_OPEN,
    DOWNSTREAM_RESTARTS,
    DOWNSTREAM_UNROUTED,
    DOWNSTREAM_UP,
    downstream_series,
)
from agent_mcp_gateway.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    KINDS,
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    Kind,
)

log = logging.getLogger("agent_mcp_gateway.downstream")

State = Literal["connecting", "up", "down", "closed"]
ChangeListener = Callable[[str, Kind], None]
UpdateListener = Callable[[str, str, str], Awaitable[None]]  # server, resource URI, owner key

M = TypeVar("M", bound=BaseModel | dict[str, Any])
Answered = TypeVar("Answered", bound=BaseModel)

RENEWALS_AT_ONCE = 8  # subscriptions renewed in parallel after a reconnect
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
LISTEN_RETRY_CAP = 30.0  # seconds between attempts to reopen a listen stream, at most
ELICIT_PARAMS: TypeAdapter[mt.ElicitRequestParams] = TypeAdapter(mt.ElicitRequestParams)


@dataclass(frozen=True, slots=True)
class Shared:
    """What every downstream of a pool shares: its timeouts, whom it tells about catalog
    changes and resource updates, the pins its tools are checked against, the instance
    defaults of servers that set none, and whether a client session is still open."""

    pins: PinStore
    connect_timeout: float = 15.0
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    on_change: ChangeListener | None = None
    on_update: UpdateListener | None = None
    isolation: Isolation = "agent"
    idle_timeout: float = 600.0
    max_instances: int = 32
    session_alive: Callable[[str], bool] | None = None
    # One for all sessions: an agent's session started during a name server outage connects
    # with the answer another session got (kept across reconnects too).
    resolver: LastGoodResolver = field(default_factory=LastGoodResolver)
    # An agent's current inbound token, for servers that exchange it (RFC 8693).
    subject_token: Callable[[str], str | None] | None = None
    # The logins `auth login` stored (None without GATEWAY_CREDENTIALS_KEY).
    logins: LoginStore | None = None


class Backoff:
    """Exponential backoff with full jitter, reset by a successful connection."""

    def __init__(self, first: float = 0.25, cap: float = 30.0) -> None:
        self.first, self.cap, self.attempt = first, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)  # noqa: S311 (jitter, not a secret)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class Round:
    """One round of a multi-round-trip request (tools/call, prompts/get, resources/read): a
    retry carries the caller's answers and the state the server asked it to echo; a 2026-07-28
    caller's declared capabilities go along for a server that asks it directly."""

    input_responses: dict[str, Any] | None = None
    request_state: str | None = None
    capabilities: dict[str, Any] | None = None

    def params(self, params: rpc.Message) -> rpc.Message:
        """`params` as sent in this round."""
        if self.input_responses is not None:
            params["inputResponses"] = {key: _wire(answer) for key, answer in self.input_responses.items()}
        if self.request_state is not None:
            params["requestState"] = self.request_state
        if self.capabilities is not None:
            params["_meta"] = {mt.CLIENT_CAPABILITIES_META_KEY: self.capabilities}
        return params


FIRST = Round()


@dataclass(frozen=True, slots=True)
class _Request(Generic[M]):
    """A request on behalf of a caller: what it is (for the span, metrics and errors), what is
    sent, the result model its answer is read into, and a check made once the server is up."""

    operation: str
    target: str
    method: str
    params: rpc.Message
    read: Callable[[Any], M]
    check: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class _Call:
    """One call in flight: what `current_call` holds while the call runs."""

    relay: Relay | None


class _Notifications(MessageHandler):
    def __init__(self, server: Downstream) -> None:
        self.server = server

    async def on_tool_list_changed(self, message: mt.ToolListChangedNotification) -> None:
        self.server.schedule_refresh("tools")

    async def on_prompt_list_changed(self, message: mt.PromptListChangedNotification) -> None:
        self.server.schedule_refresh("prompts")

    async def on_resource_list_changed(self, message: mt.ResourceListChangedNotification) -> None:
        self.server.schedule_refresh("resources")

    async def on_resource_updated(self, message: mt.ResourceUpdatedNotification) -> None:
        if self.server.on_update is not None:
            await self.server.on_update(self.server.name, str(message.params.uri), self.server.owner)

    async def on_logging_message(self, message: mt.LoggingMessageNotification) -> None:
        await self.server.forward_log(message.params)


class _CallMessages:
    """What a server sends on a call's own answer stream (`downstream_rpc`), routed as the SDK
    session routes what it reads: progress and log messages to the calling client, catalog
    changes to the server's refresh, its own requests answered by the calling client only."""

    def __init__(self, server: Downstream, relay: Relay | None) -> None:
        self.server, self.relay = server, relay

    @property
    def wants_progress(self) -> bool:
        return self.relay is not None and self.relay.wants_progress

    async def progress(self, params: rpc.Message) -> None:
        if self.relay is not None:
            await self.relay.progress(params["progress"], params.get("total"), params.get("message"))

    async def notify(self, method: str, params: rpc.Message | None) -> None:
        server = self.server
        if method == "notifications/message" and params is not None:
            await server.forward_log(mt.LoggingMessageNotificationParams.model_validate(params), self.relay)
        elif method.endswith("/list_changed"):
            kind = method.removeprefix("notifications/").removesuffix("/list_changed")
            if kind in KINDS:
                server.schedule_refresh(kind)
        elif method == "notifications/resources/updated" and params and server.on_update is not None:
            await server.on_update(server.name, str(params.get("uri")), server.owner)

    async def answer(self, method: str, params: rpc.Message | None) -> rpc.Message:
        result: mt.Result
        if method == "ping":
            return {}
        if method == "elicitation/create":
            relay = self.server.relay_for("elicitation", self.relay)
            result = await relay.elicit(ELICIT_PARAMS.validate_python(params))
        elif method == "sampling/createMessage":
            request = mt.CreateMessageRequestParams.model_validate(params)
            result = await self.server.relay_for("sampling", self.relay).sample(request)
        elif method == "roots/list":
            result = await self.server.relay_for("roots", self.relay).list_roots()
        else:
            raise MCPError(METHOD_NOT_FOUND, f"Method not found: {method}")
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


class Downstream:
    """One MCP session with a downstream server: its shared one (`owner` ""), or the one of an
    agent or client session (`owner` names it; see `downstream.pool`)."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        watchdog: Watchdog,
        shared: Shared,
        owner: str = "",
        credentials: DownstreamCredentials | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.name = name
        self.owner = owner
        # The owning agent (None on the shared session) and its own credentials for an HTTP
        # server, sent on this session only.
        self.agent_id = agent_id
        self.credentials = credentials
        # A protected server's tokens for this session, kept across reconnects.
        self._oauth = oauth_session(
            config.url or "",
            config.auth.oauth if config.auth is not None else None,
            credentials.oauth if credentials is not None else None,
            _subject(shared, agent_id),
            (shared.logins, name, agent_id or GATEWAY),
        )
        # Everything an isolated session's server sends belongs to its owner.
        self.isolated = bool(owner)
        self.isolation: Isolation = config.isolation or shared.isolation
        # The owner's client outside any call (its standalone stream), set by `claim`.
        self.outside: Relay | None = None
        self.last_used = time.monotonic()
        self.in_flight = 0
        # Set by the pool on a shared session: how many isolated ones the server runs beside it.
        self.instances = 0
        self.on_change = shared.on_change
        self.on_update = shared.on_update
        self.pins = shared.pins
        self.connect_timeout = shared.connect_timeout
        self.ping_interval = shared.ping_interval
        self.ping_timeout = shared.ping_timeout
        self.resolver = shared.resolver
        # Resource URIs the gateway has subscribed to here, renewed after a reconnect.
        self.subscribed: set[str] = set()
        self._last_answer = 0.0
        self.config = config
        self.watchdog = watchdog
        self.circuit = CircuitBreaker(on_change=self._circuit_changed)
        self.state: State = "connecting"
        self.last_error: str | None = None
        # The catalog, kept while the server is down so views stay steady across a restart.
        self.tools: dict[str, mt.Tool] = {}
        self.prompts: dict[str, mt.Prompt] = {}
        self.resources: dict[str, mt.Resource] = {}  # by URI
        self.templates: tuple[mt.ResourceTemplate, ...] = ()
        self.connected_at: float | None = None
        # The protocol era negotiated on the current connection (None before the first).
        self.protocol: str | None = None
        self.tried = asyncio.Event()
        self._lost = asyncio.Event()
        self._client: Client[Any] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        # On 2026-07-28: the `subscriptions/listen` stream's task, and the resource URIs its
        # server acknowledged (resolved once the stream is open).
        self._listener: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[frozenset[str]] | None = None
        self._relistening = asyncio.Lock()  # one filter change at a time
        self._notices: set[asyncio.Task[None]] = set()
        self._stale: set[Kind] = set()
        self._wire: StdioServerTransport | HttpServerTransport | None = None
        self._gauge(DOWNSTREAM_UP, 0)
        self._gauge(DOWNSTREAM_CIRCUIT_OPEN, 0)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def modern(self) -> bool:
        """Whether the current connection speaks 2026-07-28 (per request, no session)."""
        return self.protocol in MODERN_PROTOCOL_VERSIONS

    def start(self) -> None:
        # A fresh context: an instance started by a call must not carry that call's request id,
        # span or `current_call` into the session's own work.
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"downstream:{self.name}", context=contextvars.Context()
        )

    def _gauge(self, gauge: Any, value: float) -> None:
        """Per-server health gauges follow the shared session only: labels stay bounded, and the
        server's health is its shared session's."""
        if not self.isolated:
            gauge.labels(self.name).set(value)

    def claim(self, relay: Relay | None) -> None:
        """A use by the owner: it keeps the session from being reaped, and its client becomes
        where messages sent between calls go (the latest that can answer roots, else the
        latest)."""
        self.last_used = time.monotonic()
        if relay is None:
            return
        outside, current = relay.detached(), self.outside
        if current is None or outside.declares_roots or not current.declares_roots:
            self.outside = outside
            if current is not None and current.client != outside.client and outside.declares_roots:
                self.roots_changed()  # another client of the owner's: its roots may differ

    def roots_changed(self) -> None:
        """Tell the server its owner's roots may have changed, so it asks for them again."""
        client = self._client
        if client is None or self.state != "up" or self.modern:
            return  # 2026-07-28 has no such notification
        task = asyncio.create_task(self._send_roots_changed(client))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _send_roots_changed(self, client: Client[Any]) -> None:
        try:
            await client.send_roots_list_changed()
        except Exception as exc:  # a session being lost says so elsewhere
            log.info("roots change not sent", extra={"server": self.name, "error": repr(exc)})

    def idle_for(self, now: float) -> float:
        """Seconds since the session was last used; 0 while a call runs on it or a client is
        subscribed through it."""
        return 0.0 if self.in_flight or self.subscribed else now - self.last_used

    async def close(self) -> None:
        self.state = "closed"
        if not self.isolated:
            DOWNSTREAM_UP.remove(self.name)
            DOWNSTREAM_CIRCUIT_OPEN.remove(self.name)
        for task in (self._refresh, self._supervisor):
            if task is not None:
                task.cancel()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._disconnect()

    async def _supervise(self) -> None:
        backoff = Backoff()
        while self.state != "closed":
            try:
                await asyncio.wait_for(self._connect(), self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure to connect is retried, never fatal
                await self._disconnect()
                self._mark_down(_describe(exc, "connect"))
                self.circuit.record_failure(self.last_error or "connect failed")
                self.tried.set()
                DOWNSTREAM_RESTARTS.labels(self.name).inc()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self.circuit.record_probe()
            self._lost.clear()
            self.state, self.last_error, self.connected_at = "up", None, time.time()
            self._gauge(DOWNSTREAM_UP, 1)
            self.tried.set()
            log.info(
                "downstream connected",
                extra={"server": self.name, "tools": len(self.tools), "protocol": self.protocol},
            )
            # On 2026-07-28 the listen stream, opened on connecting, renews the subscriptions.
            renewals = None if self.modern else asyncio.create_task(self._renew_subscriptions())
            await self._watch()
            if renewals is not None:
                renewals.cancel()
            await self._disconnect()
            if not self.closed:
                DOWNSTREAM_RESTARTS.labels(self.name).inc()

    async def _connect(self) -> None:
        """Connect in the server's `protocol` era: "auto" probes `server/discover` and falls
        back to the handshake (the SDK's negotiation); 2025-11-25 sends only the handshake;
        2026-07-28 sends only `server/discover`, refused by a server that does not speak it.
        On 2026-07-28 list changes come through a `subscriptions/listen` stream
        (`_listen`); on the handshake era the session delivers them between calls."""
        forced = self.config.protocol
        client = Client(
            self._transport(),
            name="agent-mcp-gateway",
            message_handler=_Notifications(self),
            elicitation_handler=self._elicit,
            sampling_handler=self._sample,
            # A shared session declares no roots: whose roots they would be cannot be told.
            roots=self._list_roots if self.isolated else None,
            init_timeout=self.connect_timeout,
            mode="legacy" if forced == HANDSHAKE else "auto",
            auto_initialize=forced != MODERN,
        )
        self._client = client
        await client.__aenter__()  # type: ignore[no-untyped-call]  # fastmcp leaves it unannotated
        if forced == MODERN:
            await _discover(client)
        self.protocol = client.protocol_version
        if self.modern:
            # Listening before the catalog is read: no change in between goes unnoticed.
            await asyncio.shield(self._start_listening())
        await self._load(client, KINDS)

    async def _renew_subscriptions(self) -> None:
        """Subscribe again, after a reconnect, to what was subscribed before: once the session is
        up (outside the connect deadline, so no number of subscriptions can keep a server from
        reconnecting), `RENEWALS_AT_ONCE` at a time, each failure logged and left to the next
        reconnect."""
        client, gate = self._client, asyncio.Semaphore(RENEWALS_AT_ONCE)
        if client is None:
            return

        async def renew(uri: str) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(client.session.subscribe_resource(uri), self.ping_timeout)
                except Exception as exc:
                    log.warning(
                        "subscription renewal failed",
                        extra={"server": self.name, "uri": uri[:200], "error": type(exc).__name__},
                    )

        await asyncio.gather(*(renew(uri) for uri in list(self.subscribed)))

    async def _watch(self) -> None:
        """Wait until the session is lost: a failed call says so, or a ping of an idle one."""
        while self.state == "up":
            try:
                await asyncio.wait_for(self._lost.wait(), self.ping_interval)
            except TimeoutError:
                if self._heard_within(self.ping_interval) or await self._ping():
                    continue
                self._lost.set()
            self._mark_down(self.last_error or "connection lost")

    async def _ping(self) -> bool:
        """Whether the server still answers: a ping on the handshake era, `server/discover` on
        2026-07-28 (which has no ping; discover may be sent at any time)."""
        client = self._client
        if client is None:
            return False
        try:
            if self.modern and self.protocol is not None:
                await asyncio.wait_for(client.session.send_discover(self.protocol), self.ping_timeout)
            else:
                await asyncio.wait_for(client.ping(), self.ping_timeout)
            return True
        except asyncio.CancelledError:
            raise
        except (TimeoutError, MCPError) as exc:
            # REQUEST_TIMEOUT: the SDK's own 10 s bound on `server/discover`, no answer either.
            if isinstance(exc, TimeoutError) or exc.code == mt.REQUEST_TIMEOUT:
                if self._heard_within(self.ping_timeout):
                    return True  # the answer is queued behind a long message still arriving
                self.last_error = "ping timed out"
                return False
            if not _is_connection_loss(exc):
                return True  # any answer proves the session is alive (2026-era servers lack ping)
            self.last_error = _describe(exc, "ping")
            return False
        except Exception as exc:
            self.last_error = _describe(exc, "ping")
            return False

    async def _disconnect(self) -> None:
        await self._stop_listening()
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 5)  # type: ignore[no-untyped-call]
            except Exception as exc:  # a dead server can fail to close; it is gone either way
                log.debug("downstream close failed", extra={"server": self.name, "error": repr(exc)})

    def _mark_down(self, reason: str) -> None:
        if self.state == "closed":
            return
        if self.state == "up":
            log.warning("downstream lost", extra={"server": self.name, "reason": reason})
        self.state, self.last_error = "down", reason
        self._gauge(DOWNSTREAM_UP, 0)

    def _circuit_changed(self, is_open: bool) -> None:
        if self.closed:
            return
        self._gauge(DOWNSTREAM_CIRCUIT_OPEN, is_open)
        if is_open:
            log.warning(
                "downstream circuit opened", extra={"server": self.name, "reason": self.circuit.last_failure}
            )
        else:
            log.info("downstream circuit closed", extra={"server": self.name})

    def _lose(self, reason: str) -> None:
        self.last_error = reason
        self._mark_down(reason)
        self._lost.set()

    # --- tools -----------------------------------------------------------------------------

    async def _load(self, client: Client[Any], kinds: tuple[Kind, ...]) -> None:
        """Read the catalog kinds the server offers, then tell the listener which changed."""
        offered = _offered(client)
        changed: list[Kind] = []
        for kind in kinds:
            if kind not in offered:
                continue
            before = self._catalog(kind)
            if kind == "tools":
                listed = await client.list_tools()
                self.tools = {
                    tool.name: tool
                    for tool in self.pins.review(self.name, listed, self.config.pin_tools, self.owner)
                }
            elif kind == "prompts":
                self.prompts = {prompt.name: prompt for prompt in await client.list_prompts()}
            else:
                self.resources = {str(res.uri): res for res in await client.list_resources()}
                self.templates = tuple(await client.list_resource_templates())
            if self._catalog(kind) != before:
                changed.append(kind)
        for kind in changed:
            if self.on_change is not None:
                self.on_change(self.name, kind)

    def _catalog(self, kind: Kind) -> object:
        if kind == "tools":
            return self.tools
        if kind == "prompts":
            return self.prompts
        return (self.resources, self.templates)

    def schedule_refresh(self, *kinds: Kind) -> None:
        """Re-read the catalog after a `list_changed` notification (or a reload)."""
        self._stale.update(kinds or KINDS)
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._refresh_stale())

    async def _refresh_stale(self) -> None:
        while self._stale:
            kinds = tuple(kind for kind in KINDS if kind in self._stale)
            self._stale.clear()
            client = self._client
            if client is None or self.state != "up":
                return
            try:
                await self._load(client, kinds)
            except Exception as exc:
                log.warning("catalog refresh failed", extra={"server": self.name, "error": repr(exc)})

    async def list_tools(self) -> list[mt.Tool]:
        await self._require_calls()
        return list(self.tools.values())

    # --- calls -----------------------------------------------------------------------------

    async def _require_calls(self) -> rpc.Calls:
        if self.state == "connecting":
            # A call that races start-up waits for the first attempt instead of failing.
            await asyncio.wait([asyncio.ensure_future(self.tried.wait())], timeout=self.connect_timeout)
        calls = self._wire.calls if self._wire is not None else None
        if self.state != "up" or calls is None:
            raise ServerUnavailable(self.name, self.last_error or self.state)
        return calls

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout_ms: int,
        relay: Relay | None,
        known: Callable[[], None],
        round: Round = FIRST,
    ) -> mt.CallToolResult | mt.InputRequiredResult:
        """Call a tool; the timeout covers the whole call, including waiting for start-up.
        `known` (built by `server.forward`) checks the tool is listed once the server is up.
        A 2026-07-28 server may answer with the questions it asks first; its retry is another
        `round`."""
        params = round.params({"name": tool, "arguments": arguments})
        call = _Request("execute_tool", tool, "tools/call", params, _answer(mt.CallToolResult), known)
        return await self._request(call, timeout_ms, relay)

    async def relay_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout_ms: int,
        relay: Relay,
        known: Callable[[], None],
        capabilities: dict[str, Any] | None = None,
    ) -> dict[str, Any] | mt.InputRequiredResult:
        """`call_tool` for the call lane (`server.lane`): the arguments as received, the
        result as the server sent it once its shape is checked (not read into a model and
        dumped again), or the questions a 2026-07-28 server asks first."""
        params: rpc.Message = {"name": tool, "arguments": arguments}
        if capabilities is not None:
            params["_meta"] = {mt.CLIENT_CAPABILITIES_META_KEY: capabilities}
        call = _Request("execute_tool", tool, "tools/call", params, _relayed_answer, known)
        return await self._request(call, timeout_ms, relay)

    async def get_prompt(
        self,
        prompt: str,
        arguments: dict[str, str] | None,
        timeout_ms: int,
        relay: Relay | None,
        round: Round = FIRST,
    ) -> mt.GetPromptResult | mt.InputRequiredResult:
        """Get a prompt; like a tool call, a 2026-07-28 server may ask its questions first."""
        params = round.params({"name": prompt, **({"arguments": arguments} if arguments is not None else {})})
        get = _Request("prompts/get", prompt, "prompts/get", params, _answer(mt.GetPromptResult))
        return await self._request(get, timeout_ms, relay)

    async def read_resource(
        self, uri: str, timeout_ms: int, relay: Relay | None, round: Round = FIRST
    ) -> mt.ReadResourceResult | mt.InputRequiredResult:
        """Read a resource; like a tool call, a 2026-07-28 server may ask its questions first."""
        params = round.params({"uri": uri})
        read = _Request("resources/read", uri, "resources/read", params, _answer(mt.ReadResourceResult))
        return await self._request(read, timeout_ms, relay)

    async def complete(
        self,
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
        timeout_ms: int,
    ) -> mt.CompleteResult:
        params: rpc.Message = {
            "ref": ref.model_dump(mode="json", by_alias=True, exclude_none=True),
            "argument": {"name": argument.name, "value": argument.value},
        }
        if context is not None and context.arguments is not None:
            params["context"] = {"arguments": context.arguments}
        name = argument.name
        complete = _Request(
            "completion/complete", name, "completion/complete", params, mt.CompleteResult.model_validate
        )
        return await self._request(complete, timeout_ms, None)

    def extensions(self) -> dict[str, dict[str, Any]]:
        """The extensions (SEP-2133) the server declared, by identifier ({} before it answered)."""
        capabilities = _capabilities(self._client)
        return dict(capabilities.extensions or {}) if capabilities is not None else {}

    async def supports_subscriptions(self) -> bool:
        """Whether the server declared resource subscriptions in the era it is spoken to (once
        it first tried to connect: an isolated session may have just been started). On
        2026-07-28 the flag says its `subscriptions/listen` stream honors them: a dual-era
        server that serves `resources/subscribe` but no listen stream offers none there."""
        if self.state == "connecting":
            await asyncio.wait([asyncio.ensure_future(self.tried.wait())], timeout=self.connect_timeout)
        capabilities = _capabilities(self._client)
        resources = capabilities.resources if capabilities is not None else None
        return bool(resources is not None and resources.subscribe)

    async def subscribe(self, uri: str, timeout_ms: int) -> None:
        if self.modern:
            await self._relisten(uri, timeout_ms, add=True)
            return
        method = "resources/subscribe"
        await self._request(
            _Request(method, uri, method, {"uri": uri}, mt.EmptyResult.model_validate), timeout_ms, None
        )
        self.subscribed.add(uri)

    async def unsubscribe(self, uri: str, timeout_ms: int) -> None:
        if self.modern:
            await self._relisten(uri, timeout_ms, add=False)
            return
        self.subscribed.discard(uri)
        method = "resources/unsubscribe"
        await self._request(
            _Request(method, uri, method, {"uri": uri}, mt.EmptyResult.model_validate), timeout_ms, None
        )

    # --- 2026-07-28 subscriptions/listen ------------------------------------------------

    async def _relisten(self, uri: str, timeout_ms: int, add: bool) -> None:
        """Subscribe to `uri` (or stop) on 2026-07-28: a listen stream's filter is fixed when it
        opens, so a new stream replaces the old one, closed once the new one is acknowledged
        (nothing is missed in between); a subscription counts once that acknowledgment honors
        it."""
        try:
            async with asyncio.timeout(timeout_ms / 1000), self._relistening:
                await self._require_calls()
                if add:
                    self.subscribed.add(uri)
                else:
                    self.subscribed.discard(uri)
                old = self._listener
                try:
                    honored = await asyncio.shield(self._start_listening())
                finally:
                    if old is not None:
                        old.cancel()
        except TimeoutError:
            raise GatewayTimeout("resources/subscribe", timeout_ms) from None
        except (OSError, ConnectionError) as exc:
            raise ServerUnavailable(self.name, _describe(exc, "listen")) from None
        if add and uri not in honored:
            self.subscribed.discard(uri)
            raise self._retold(uri, MCPError(INVALID_PARAMS, "the server did not honor the subscription"))

    def _start_listening(self) -> asyncio.Future[frozenset[str]]:
        client = self._client
        listening = self._listening = asyncio.get_running_loop().create_future()
        # Its outcome may go unread (nobody subscribing waits for it): never a warning.
        listening.add_done_callback(lambda done: done.cancelled() or done.exception())
        if client is None:
            listening.set_exception(ConnectionError("not connected"))
        else:
            self._listener = asyncio.create_task(self._listen(client, listening))
        return listening

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if self._listening is not None and not self._listening.done():
            self._listening.set_exception(ConnectionError("the listen stream was closed"))

    async def _listen(self, client: Client[Any], listening: asyncio.Future[frozenset[str]]) -> None:
        """Keep a `subscriptions/listen` stream open to a 2026-07-28 server: its list changes
        and resource updates reach `_Notifications` as the session reads them, as a handshake
        session's would, so this task only drains the stream's own queue. A stream that ends
        is reopened and the catalog read again (events in between are lost); one that cannot
        be reopened while the server answers no `server/discover` means the server is lost."""
        backoff = Backoff(first=0.5, cap=LISTEN_RETRY_CAP)
        opened = False
        while self._client is client and not self.closed:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with anyio.fail_after(self.connect_timeout):
                        subscription = await stack.enter_async_context(
                            listen(
                                client.session,
                                tools_list_changed=True,
                                prompts_list_changed=True,
                                resources_list_changed=True,
                                resource_subscriptions=sorted(self.subscribed),
                            )
                        )
                    if opened:
                        self.schedule_refresh()
                    opened = True
                    backoff.reset()
                    if not listening.done():
                        listening.set_result(frozenset(subscription.honored.resource_subscriptions or ()))
                    async for _event in subscription:
                        pass
                reason = "the server closed the listen stream"
            except asyncio.CancelledError:
                if not listening.done():
                    listening.set_exception(ConnectionError("the listen stream was closed"))
                raise
            except Exception as exc:
                reason = _describe(exc, "listen")
                if isinstance(exc, MCPError) and exc.code == METHOD_NOT_FOUND:
                    log.warning("downstream serves no subscriptions/listen", extra={"server": self.name})
                    if not listening.done():
                        listening.set_result(frozenset())
                    return
                if not listening.done():
                    listening.set_exception(ConnectionError(reason))
                if not await self._ping():
                    self._lose(reason)
                    return
            log.info("downstream listen stream reopened", extra={"server": self.name, "reason": reason})
            await asyncio.sleep(backoff.next_delay())

    async def _request(self, request: _Request[M], timeout_ms: int, relay: Relay | None) -> M:
        """One request to the server on behalf of one caller, sent beside the session
        (`downstream_rpc`); what the server sends during it goes to that caller only.

        Its outcome feeds the circuit breaker: an answer (even an error) closes it, a lost
        connection or a timeout counts towards opening it.
        """
        operation, target = request.operation, request.target
        started = time.perf_counter()
        outcome = "error"
        token = current_call.set(_Call(relay))
        self.in_flight += 1
        span = tracing.begin_downstream(self.name, operation, target)
        trial = sent = False
        calls: rpc.Calls | None = None
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                trial = self._admit()
                calls = await self._require_calls()
                if request.check is not None:
                    request.check()
                sent = True
                params = request.params
                if meta := inject_trace_context(None):
                    params = {**params, "_meta": {**params.get("_meta", {}), **meta}}
                answer = await calls.request(request.method, params, _CallMessages(self, relay))
            result = request.read(answer)
            outcome = "tool_error" if getattr(result, "is_error", False) else "ok"
            self._answered()
            return result
        except TimeoutError:
            outcome = "timeout"
            if sent:
                self.circuit.record_failure("call timed out")
            raise GatewayTimeout(operation, timeout_ms) from None
        except ValidationError:
            self._answered()
            raise self._retold(target, MCPError(INTERNAL_ERROR, "the server's result is malformed")) from None
        except MCPError as exc:
            self._answered()
            if isinstance(exc.data, rpc.TooLarge):
                raise ResultTooLarge(self.name, target, exc.data.limit, exc.data.size) from None
            raise self._retold(target, exc) from None
        except (OSError, ConnectionError) as exc:
            # A call still on a connection already replaced says nothing of the current one.
            if self._wire is not None and calls is self._wire.calls:
                self._lose(_describe(exc, "call"))
                self.circuit.record_failure("connection lost during a call")
            raise ServerUnavailable(self.name, "connection lost during the call") from None
        finally:
            self.circuit.release(trial)
            self.in_flight -= 1
            self.last_used = time.monotonic()
            current_call.reset(token)
            tracing.end_downstream(span, outcome)
            downstream_series(self.name, outcome).observe(time.perf_counter() - started)

    def _admit(self) -> bool:
        try:
            return self.circuit.admit()
        except CircuitOpen as exc:
            raise ServerUnavailable(self.name, str(exc)) from None

    def _answered(self) -> None:
        self._last_answer = time.monotonic()
        self.circuit.record_success()

    def _retold(self, tool: str, exc: MCPError) -> DownstreamError:
        """The downstream's error for the caller; its own words only in the gateway's log."""
        request_id = logs.request_id.get()
        log.warning(
            "downstream answered with an error",
            extra={
                "server": self.name,
                "tool": tool,
                "code": exc.code,
                "error": exc.message,
                "data": exc.data,
            },
        )
        return DownstreamError(self.name, tool, exc.code, request_id)

    def _heard_within(self, seconds: float) -> bool:
        """Whether the server answered a call, or sent any bytes, in the last `seconds`."""
        wire = self._wire
        heard = max(self._last_answer, wire.last_received if isinstance(wire, StdioServerTransport) else 0.0)
        return time.monotonic() - heard < seconds

    def relay_for(self, what: str, relay: Relay | None = None) -> Relay:
        """The client a server's own request goes to: the call it came with (`relay`, else the
        one `current_call` names), else an isolated session's owner outside any call. Refused
        otherwise, and counted: any other client may belong to another agent."""
        relay = relay or self._owning_relay()
        if relay is None:
            DOWNSTREAM_UNROUTED.labels(self.name, "request").inc()
            log.info("downstream request dropped: no caller it belongs to", extra={"server": self.name})
            raise MCPError(METHOD_NOT_FOUND, f"{what} requests reach only the client they belong to")
        return relay

    def _owning_relay(self) -> Relay | None:
        """The call `current_call` names; on an isolated session, once that call has ended
        (stdio names the call a message was read during, which may end before it is handled),
        or when none is named, the owner's client outside a call."""
        call = current_call.get()
        if isinstance(call, _Call) and call.relay is not None and (call.relay.live or not self.isolated):
            return call.relay
        return self.outside if self.isolated else None

    async def _elicit(
        self, message: str, response_type: Any, params: mt.ElicitRequestParams, context: Any
    ) -> mt.ElicitResult:
        return await self.relay_for("elicitation").elicit(params)

    async def _sample(
        self, messages: list[mt.SamplingMessage], params: mt.CreateMessageRequestParams, context: Any
    ) -> mt.CreateMessageResult:
        return await self.relay_for("sampling").sample(params)

    async def _list_roots(self, context: Any) -> list[mt.Root]:
        return list((await self.relay_for("roots").list_roots()).roots)

    async def forward_log(
        self, params: mt.LoggingMessageNotificationParams, relay: Relay | None = None
    ) -> None:
        """Send a downstream log message to the client it belongs to, else to the gateway's log.

        A message read while a call of the gateway's own waits (`downstream_rpc`) comes with
        that call's `relay`: over Streamable HTTP the call's answer stream carried it, and over
        stdio the transport of an isolated session names the call only when exactly one was
        waiting for its answer (stdio carries nothing to tell). Otherwise the SDK session runs
        this handler, in the context the message arrived in, where `current_call` may name the
        call; an isolated session's message then goes to its owner's client. On the shared
        session a message that names no call never goes to a caller, who may be another agent.
        """
        relay = relay or self._owning_relay()
        if relay is not None:
            try:
                await relay.log(params)
                return
            except Exception as exc:
                log.warning("log forward failed", extra={"server": self.name, "error": repr(exc)})
        else:
            DOWNSTREAM_UNROUTED.labels(self.name, "log").inc()
        log.info(
            "downstream log",
            extra={"server": self.name, "log_level": params.level, "data": params.data},
        )

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "transport": self.config.kind,
            "protocol": self.protocol,
            "tools": len(self.tools),
            "last_error": self.last_error,
            "connected_at": self.connected_at,
            "circuit": self.circuit.status(),
            "isolation": self.isolation,
            "instances": self.instances,
        }

    def _transport(self) -> StdioServerTransport | HttpServerTransport:
        config = self.config
        if config.command:
            self._wire = StdioServerTransport(self.name, config, self.watchdog, exclusive=self.isolated)
        else:
            headers = self.credentials.plain() if self.credentials is not None else {}
            self._wire = HttpServerTransport(config, self.resolver, headers, self._oauth)
        return self._wire


def _answer(result: type[Answered]) -> Callable[[Any], Answered | mt.InputRequiredResult]:
    """How a multi-round-trip request's answer is read: its result, or (2026-07-28) the
    questions the server asks first."""

    def read(answer: Any) -> Answered | mt.InputRequiredResult:
        if is_input_required(answer):
            return mt.InputRequiredResult.model_validate(answer)
        return result.model_validate(answer)

    return read


def _relayed_answer(answer: Any) -> dict[str, Any] | mt.InputRequiredResult:
    """A tools/call answer for the call lane: a result of the right shape, as sent."""
    if is_input_required(answer):
        return mt.InputRequiredResult.model_validate(answer)
    if not (
        isinstance(answer, dict)
        and isinstance(answer.get("content"), list)
        and all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in answer["content"])
        and isinstance(answer.get("isError", False), bool)
        and isinstance(answer.get("structuredContent", {}), dict)
        and isinstance(answer.get("_meta", {}), dict)
    ):
        raise MCPError(INTERNAL_ERROR, "the server's result is malformed")
    return answer


def _wire(value: Any) -> Any:
    return (
        value.model_dump(mode="json", by_alias=True, exclude_none=True)
        if isinstance(value, BaseModel)
        else value
    )


def _subject(shared: Shared, agent_id: str | None) -> Callable[[], str | None] | None:
    """Where an agent's session finds the agent's current inbound token (none on the shared
    session: it acts for no agent)."""
    lookup = shared.subject_token
    if lookup is None or agent_id is None:
        return None
    return lambda: lookup(agent_id)


def _capabilities(client: Client[Any] | None) -> mt.ServerCapabilities | None:
    """What the server declared in its initialize or discover answer (None before it answered)."""
    return client.server_capabilities if client is not None else None


def _offered(client: Client[Any]) -> set[Kind]:
    """The catalog kinds a server declares; tools are always read (servers omit the flag)."""
    capabilities = _capabilities(client)
    offered: set[Kind] = {"tools"}
    if capabilities is not None and capabilities.prompts is not None:
        offered.add("prompts")
    if capabilities is not None and capabilities.resources is not None:
        offered.add("resources")
    return offered


def _is_connection_loss(exc: MCPError) -> bool:
    return exc.code == SERVER_ERROR and exc.message == "Connection closed"


class EraRefused(Exception):
    """The server does not speak the protocol era its configuration forces."""


async def _discover(client: Client[Any]) -> None:
    """Adopt 2026-07-28 through `server/discover`, or raise EraRefused. The SDK gives the probe
    10 s, where the handshake's `initialize` waits the connect timeout: a stdio server that takes
    longer to start (a Python one did on a loaded machine) was refused and restarted, only to
    start as slowly again. A probe that timed out is sent again (the server answers in order, so
    once up it answers the next at once); the connect deadline bounds the whole."""
    while True:
        try:
            await client.session.discover()
            return
        except MCPError as exc:
            if exc.code != mt.REQUEST_TIMEOUT:
                raise EraRefused(f"the server does not speak {MODERN}") from exc
        except RuntimeError as exc:  # it lists no modern version
            raise EraRefused(f"the server does not speak {MODERN}") from exc


def _describe(exc: BaseException, during: str) -> str:
    """A reason an agent may read: the kind of failure, never a path or a secret."""
    if isinstance(exc, EraRefused):
        return f"{during} failed: {exc}"
    while isinstance(exc, RuntimeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TimeoutError):
        return f"{during} timed out"
    if isinstance(exc, AuthorizationFailed):  # the gateway's own words: a step, never a secret
        return f"{during} failed: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"{during} failed: command not found"
    if isinstance(exc, MCPError) and _is_connection_loss(exc):
        return f"{during} failed: connection closed"
    return f"{during} failed: {type(exc).__name__}"
