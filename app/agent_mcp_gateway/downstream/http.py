"""The Streamable HTTP connection to a downstream server, with the server's result size limit.

fastmcp's `StreamableHttpTransport` leaves the SDK's limit of 1 MiB per server-sent event in
place, so any result over 1 MiB from an HTTP server failed. This transport sets that limit to
the server's `max_result_bytes` instead, and keeps its connections alive between calls (see
`KeepAlive`, which also passes the call's trace context on in a `traceparent` header). The SDK's
client holds the session; calls are sent beside it on the same connections (`HttpCalls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Unpack

import aiohttp
import aiohttp.abc
import anyio
import httpcore2
import httpx2
import pydantic_core
import yarl
from fastmcp.client.transports import ClientTransport
from fastmcp.client.transports.base import SessionKwargs, TransportOptions
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agent_mcp_gateway.compat import era_envelope, get_env_proxy_for_url, set_network_backend
from agent_mcp_gateway.config import ServerConfig
from agent_mcp_gateway.downstream import rpc as rpc
from agent_mcp_gateway.downstream.oauth import AuthorizationFailed, DownstreamTokens
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.protocol import INTERNAL_ERROR, PROTOCOL_VERSION_HEADER, SESSION_HEADER

# The SDK's defaults: a response stream may stay open for a long-running call.
TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# How much of an answer's unread tail is read to keep its connection: the end of the stream
# normally follows the JSON-RPC response at once, so these bounds only cap a server that
# keeps streaming; past them the connection is closed as before.
DRAIN_SECONDS = 0.5
DRAIN_BYTES = 64 * 1024
# The SDK's own resumption rules: wait the server's retry (else 1 s), give up after 2 failures.
RESUME_DELAY_MS = 1000
RESUME_ATTEMPTS = 2
CANCEL_SECONDS = 5.0
# How long a lookup may take before the last answer is used instead (when there is one).
RESOLVE_SECONDS = 2.0
# Idle connections are kept past the ping interval (10 s by default), so a session's pings and
# calls find their connection still open where the server allows it: no new connection, and no
# name lookup, every ping.
KEEPALIVE_SECONDS = 30.0


_Key = tuple[str, int, int]  # host, port, address family


class LastGoodResolver(aiohttp.abc.AbstractResolver):
    """The system's name lookups, falling back to the last answer while they fail or stall.

    A downstream the gateway already reaches should not become unavailable because the name
    server is briefly unreachable: measured on Debian 12's podman, its DNS server stopped
    answering for about 40 s after a compose stack started, and every new connection to a
    healthy server failed meanwhile. An address that changes is still picked up at the next
    lookup that succeeds. aiohttp's resolver hook is the seam; its own cache keeps answers
    only for a fixed time and drops them on failure.
    """

    def __init__(self, system: aiohttp.abc.AbstractResolver | None = None) -> None:
        self._system = system  # by default aiohttp's, made on first use: it needs the running loop
        self._last: dict[_Key, list[aiohttp.abc.ResolveResult]] = {}
        # One lookup at a time per name, left to finish when a caller stops waiting for it: a
        # stalled lookup holds one of the event loop's few resolver threads for up to 20 s, and
        # its late outcome would otherwise be logged as an exception nobody retrieved.
        self._pending: dict[_Key, tuple[asyncio.Future[list[aiohttp.abc.ResolveResult]], float]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        key = (host, port, family)
        pending = self._pending.get(key)
        if pending is None:
            if self._system is None:
                self._system = aiohttp.ThreadedResolver()
            started = asyncio.ensure_future(self._system.resolve(host, port, family))
            pending = self._pending[key] = (started, time.monotonic())
            started.add_done_callback(lambda done: self._settle(key, done))
        lookup, since = pending
        last = self._last.get(key)
        # A lookup already stalled past the bound is not waited for again: every new connection
        # during an outage (a session's several, each call's) would otherwise wait the bound.
        bound = max(0.0, since + RESOLVE_SECONDS - time.monotonic()) if last is not None else None
        try:
            async with asyncio.timeout(bound):
                return await asyncio.shield(lookup)
        except (OSError, TimeoutError):
            if last is None:
                raise
            return last

    async def remember(self, url: yarl.URL) -> None:
        """Look the URL's host up as aiohttp's connector will (any address family)."""
        if url.host is None or url.port is None:
            return
        with contextlib.suppress(OSError, TimeoutError):
            await self.resolve(url.host, url.port, socket.AF_UNSPEC)

    def _settle(self, key: _Key, lookup: asyncio.Future[list[aiohttp.abc.ResolveResult]]) -> None:
        del self._pending[key]
        if not lookup.cancelled() and lookup.exception() is None:
            self._last[key] = lookup.result()

    async def close(self) -> None:
        """Nothing to release: the system resolver holds nothing, and the last answers are
        kept for the next connection."""


class LastGoodBackend(httpcore2.AnyIOBackend):
    """The SDK session's connections, looked up through the pool's `LastGoodResolver`.

    Without it the SDK's HTTP client asks the system on every new connection: a session that
    starts while the name server is silent (an agent's own session, opened on its first call)
    failed to connect to a server the gateway already reached (3 scale-stack tests in a CI
    rehearsal). TLS still verifies the server's name: httpcore takes it from the URL, not from
    the address connected to.
    """

    def __init__(self, resolver: LastGoodResolver) -> None:
        self.resolver = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                async with asyncio.timeout(timeout):
                    answers = await self.resolver.resolve(host, port, socket.AF_UNSPEC)
            except (OSError, TimeoutError) as exc:
                raise httpcore2.ConnectError(f"cannot look up {host}: {exc}") from exc
            addresses = list(dict.fromkeys(answer["host"] for answer in answers))
        failure: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # a lookup answers with at least one address
        raise failure


class KeepAlive(httpx2.AsyncBaseTransport):
    """Reuse the downstream connection from call to call.

    Workaround for an SDK cost: its Streamable HTTP client closes an SSE answer as soon as the
    JSON-RPC response is in, before the stream's final chunk is read, so httpcore drops the
    connection and every call opened a new TCP connection (on both sides). Reading that tail
    on close lets the connection go back to the pool.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        # The session the SDK negotiated, as its requests carry it: `HttpCalls` sends the same.
        self.session: dict[str, str] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # The SDK sends each request in the context of the call it belongs to, so the current
        # span here is that call's (nothing is added when tracing is off).
        tracing.inject(request.headers)
        for name in (SESSION_HEADER, PROTOCOL_VERSION_HEADER):
            if (value := request.headers.get(name)) is not None:
                self.session[name] = value
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError) as exc:
            if not _closed_before_answering(exc):
                raise
            # The server closed a kept-alive connection as this request went out on it (its idle
            # timeout met ours): it read nothing and answered nothing, so the request goes once
            # more, on a new connection. Without this the SDK ends the whole downstream session
            # on one failed POST, failing every call in flight (measured: 1 in 150-250 calls
            # against a server with a 0.2 s keep-alive; tests/unit/downstream/test_http.py).
            response = await self.inner.handle_async_request(request)
        if (session_id := response.headers.get(SESSION_HEADER)) is not None:
            self.session[SESSION_HEADER] = session_id
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """A response body that, closed early, first reads its (bounded) rest."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._parts = aiter(inner)
        self._inner = inner
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._parts:
            yield part
        self._done = True

    async def aclose(self) -> None:
        try:
            if not self._done:
                read = 0
                with anyio.move_on_after(DRAIN_SECONDS):
                    async for part in self._parts:
                        read += len(part)
                        if read > DRAIN_BYTES:
                            break
        except Exception:  # noqa: S110 (a tail that fails to read only costs the connection)
            pass
        finally:
            await self._inner.aclose()


class _Ended(Exception):
    """An answer's event stream ended before the answer: resumable from `last_event_id`."""

    def __init__(self, last_event_id: str | None, retry_ms: int | None) -> None:
        self.last_event_id, self.retry_ms = last_event_id, retry_ms


class HttpCalls:
    """Requests POSTed with the SDK session's headers, their answers (JSON or an event stream)
    read here; see `downstream_rpc` for why.

    On aiohttp rather than the session's httpx client: measured against the echo fixture, one
    POST with its event-stream answer cost 2.0-2.5 ms of client CPU with httpx and 0.8-1.1 ms
    with aiohttp (its parser is compiled), the event stream parsed by httpx's own `EventSource`
    in both.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        keep_alive: KeepAlive,
        limit: int,
        resolver: LastGoodResolver,
        oauth: DownstreamTokens | None = None,
        session: ClientSession | None = None,
    ) -> None:
        self.url, self.keep_alive, self.limit = url, keep_alive, limit
        # A protected server's tokens (downstream.oauth): the header is renewed before each
        # call, and a 401 or 403 is answered by the authorization flow and retried once.
        self._oauth = oauth
        self._oauth_http = httpx2.AsyncClient(timeout=TIMEOUT) if oauth is not None else None
        self._authorization: str | None = None
        # The SDK session beside which requests go: they speak the era it negotiated.
        self.session = session
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, keepalive_timeout=KEEPALIVE_SECONDS),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=TIMEOUT.connect, sock_read=TIMEOUT.read),
        )
        # The proxy the environment names for this URL, as the session's httpx client uses it,
        # looked up once: aiohttp's own `trust_env` looks it (and ~/.netrc) up in a worker
        # thread on every request (measured: 6.6 % of the worker's CPU on calls).
        try:
            self._proxy: yarl.URL | None
            self._proxy, self._proxy_auth = get_env_proxy_for_url(yarl.URL(url))
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        self._cancels: set[asyncio.Task[None]] = set()
        # The answers being read, closed by `aclose`: aiohttp leaves a request whose connection
        # its closed session dropped waiting for the rest of an answer that cannot come
        # (measured: until the call's own timeout).
        self._answers: set[aiohttp.ClientResponse] = set()
        # What httpx's event-stream parser names in its errors; built once (a URL parse).
        self._request = httpx2.Request("POST", url)

    async def aclose(self) -> None:
        for answer in self._answers:
            answer.close()
        await self.client.close()
        if self._oauth_http is not None:
            await self._oauth_http.aclose()

    def _headers(self, accept: str = "application/json, text/event-stream") -> dict[str, str]:
        headers = {"accept": accept, "content-type": "application/json", **self.keep_alive.session}
        if self._authorization is not None:
            headers["authorization"] = self._authorization
        tracing.inject(headers)
        return headers

    async def _challenged(self, response: aiohttp.ClientResponse) -> bool:
        """Whether a 401 or 403 got a new token worth one retry (a protected server only). A
        refusal no token can cure (a scope the client may not have, a revoked client) fails
        this call, not the session."""
        if self._oauth is None or self._oauth_http is None or response.status not in (401, 403):
            return False
        try:
            self._authorization = await self._oauth.challenged(
                self._oauth_http, response.status, response.headers
            )
        except AuthorizationFailed as exc:
            raise MCPError(INTERNAL_ERROR, f"the server answered HTTP {response.status}; {exc}") from None
        return True

    async def request(self, method: str, params: rpc.Message, messages: rpc.CallMessages) -> rpc.Message:
        request_id = rpc.new_id()
        era_headers: dict[str, str] = {}
        if self.session is not None:
            params, era_headers = era_envelope(self.session, method, params)
        body = pydantic_core.to_json(rpc.request(request_id, method, params, messages))
        if self._oauth is not None and self._oauth_http is not None:
            try:
                self._authorization = await self._oauth.authorization(self._oauth_http)
            except AuthorizationFailed as exc:  # this call fails, saying why; the session stays
                raise MCPError(INTERNAL_ERROR, f"no token for the call: {exc}") from None
        try:
            try:
                async with self._send("POST", body, self._headers() | era_headers) as response:
                    retry = await self._challenged(response)
                    if not retry:
                        answer = await self._answer(response, request_id, messages)
                if retry:
                    async with self._send("POST", body, self._headers() | era_headers) as response:
                        answer = await self._answer(response, request_id, messages)
            except _Ended as ended:
                answer = await self._resume(ended, request_id, messages)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # Nobody cancelled this call: aiohttp cancels a request still connecting (or
                # looking up its host) when its session closes. Let through, that cancellation
                # ended the caller's whole MCP session, not just this call.
                raise ConnectionError("the connection was closed during the request") from None
            self._cancel(request_id)
            raise
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"the request failed: {type(exc).__name__}") from None
        return rpc.outcome(answer)

    @asynccontextmanager
    async def _send(
        self, method: str, body: bytes | None, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request whose answer's unread rest is drained once it is answered, so its
        connection is kept; a kept-alive connection closed under it is retried once (see
        `KeepAlive`)."""
        # Redirects are never followed: aiohttp would follow one to another origin and send the
        # server's configured headers (an X-Api-Key, say) along. A 3xx is a failed call.
        options: dict[str, Any] = {
            "data": body,
            "headers": headers,
            "proxy": self._proxy,
            "allow_redirects": False,
        }
        if self._proxy_auth is not None:
            options["proxy_auth"] = self._proxy_auth
        try:
            response = await self._start(method, options)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            response = await self._start(method, options)
        self._answers.add(response)
        try:
            yield response
        except BaseException:
            response.close()  # a call given up or failed: its connection is not worth the wait
            raise
        finally:
            self._answers.discard(response)
        await _drain(response)

    async def _start(self, method: str, options: dict[str, Any]) -> aiohttp.ClientResponse:
        if self.client.closed:  # the session was replaced: this request goes nowhere
            raise ConnectionError("the connection was closed")
        return await self.client.request(method, self.url, **options)

    async def _answer(
        self, response: aiohttp.ClientResponse, request_id: str, messages: rpc.CallMessages
    ) -> rpc.Message:
        if response.status == 404 and SESSION_HEADER in self.keep_alive.session:
            raise ConnectionError("the server ended the session")
        if response.content_type == "text/event-stream" and response.status < 300:
            return await self._events(response, request_id, messages)
        body = await _read_capped(response, self.limit)
        try:
            message = pydantic_core.from_json(body)
        except ValueError:
            message = None
        if rpc.is_answer(message, request_id):
            return message  # type: ignore[no-any-return]  # is_answer checked it is a dict
        if 300 <= response.status < 400:
            raise MCPError(
                INTERNAL_ERROR,
                f"the server answered HTTP {response.status} (a redirect, which the gateway does not follow)",
            )
        raise MCPError(INTERNAL_ERROR, f"the server answered HTTP {response.status}")

    async def _events(
        self, response: aiohttp.ClientResponse, request_id: str, messages: rpc.CallMessages
    ) -> rpc.Message:
        last_event_id: str | None = None
        retry_ms: int | None = None
        stream = httpx2.Response(
            response.status,
            headers=list(response.headers.items()),
            stream=_Body(response),
            request=self._request,
        )
        try:
            async for event in httpx2.EventSource(stream, max_event_size=self.limit):
                last_event_id = event.id or last_event_id
                retry_ms = event.retry if event.retry is not None else retry_ms
                if not event.data:
                    continue
                message = pydantic_core.from_json(event.data)
                if rpc.is_answer(message, request_id):
                    return message  # type: ignore[no-any-return]
                if isinstance(message, dict) and "method" in message:
                    await self._server_message(message, request_id, messages)
        except httpx2.SSEError as exc:
            if "exceeded" in str(exc):
                raise _too_large(self.limit) from None
            raise MCPError(INTERNAL_ERROR, f"the server's event stream failed: {exc}") from None
        except ValueError:
            raise MCPError(INTERNAL_ERROR, "the server sent an event that is not JSON") from None
        raise _Ended(last_event_id, retry_ms)

    async def _server_message(
        self, message: rpc.Message, request_id: str, messages: rpc.CallMessages
    ) -> None:
        if "id" not in message:
            await rpc.route(message, request_id, messages)
            return
        await self._post(await rpc.answer_server_request(message, messages))

    async def _resume(self, ended: _Ended, request_id: str, messages: rpc.CallMessages) -> rpc.Message:
        """Pick the answer's stream up where it broke off, as the SDK does (the server closed it
        early, e.g. to poll); without an event id there is nothing to resume from."""
        failures = 0
        while ended.last_event_id is not None and failures < RESUME_ATTEMPTS:
            await asyncio.sleep((ended.retry_ms if ended.retry_ms is not None else RESUME_DELAY_MS) / 1000)
            headers = self._headers("text/event-stream") | {"last-event-id": ended.last_event_id}
            try:
                async with self._send("GET", None, headers) as response:
                    if response.status >= 300:
                        failures += 1
                        continue
                    return await self._events(response, request_id, messages)
            except _Ended as again:
                ended, failures = _Ended(again.last_event_id or ended.last_event_id, again.retry_ms), 0
            except aiohttp.ClientError:
                failures += 1
        raise ConnectionError("the answer's event stream ended without the answer")

    async def _post(self, message: rpc.Message) -> None:
        """A response or notification of the gateway's, answered 202 with no body."""
        async with self._send("POST", pydantic_core.to_json(message), self._headers()):
            pass

    def _cancel(self, request_id: str) -> None:
        """Tell the server the call is given up (as the SDK session does), without holding up
        the caller's cancellation. On 2026-07-28 HTTP carries no notification of the client's:
        the answer's stream, closed, is the signal."""
        modern = self.session is not None and self.session.protocol_version in MODERN_PROTOCOL_VERSIONS
        if self.client.closed or modern:
            return

        async def send() -> None:
            with anyio.move_on_after(CANCEL_SECONDS):
                try:
                    await self._post(rpc.cancelled(request_id, "the caller gave up"))
                except (aiohttp.ClientError, ConnectionError):
                    pass  # the server is gone, or its session with it: nothing left to cancel

        task = asyncio.create_task(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)


class _Body(httpx2.AsyncByteStream):
    """An aiohttp answer's body as httpx reads one, for httpx's event-stream parser."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.response.content.iter_any():
            yield part


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read an answer's (bounded) rest, then give its connection back; see `_DrainOnClose`."""
    try:
        read = 0
        with anyio.move_on_after(DRAIN_SECONDS):
            async for part in response.content.iter_any():
                read += len(part)
                if read > DRAIN_BYTES:
                    break
    except (aiohttp.ClientError, OSError):
        pass
    finally:
        response.release()


def _too_large(limit: int) -> MCPError:
    return MCPError(INTERNAL_ERROR, "result too large", rpc.TooLarge(None, limit))


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for part in response.content.iter_any():
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


def session_transport(resolver: LastGoodResolver) -> httpx2.AsyncHTTPTransport:
    """The SDK session's HTTP transport: connections kept past the ping interval, names looked
    up through the pool's resolver."""
    limits = httpx2.Limits(
        max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_SECONDS
    )
    http = httpx2.AsyncHTTPTransport(limits=limits)
    set_network_backend(http, LastGoodBackend(resolver))
    return http


class HttpServerTransport(ClientTransport):
    def __init__(
        self,
        config: ServerConfig,
        resolver: LastGoodResolver,
        credentials: dict[str, str] | None = None,
        oauth: DownstreamTokens | None = None,
    ) -> None:
        assert config.url is not None
        self.url, self.limit = config.url, config.max_result_bytes
        self.headers = with_credentials(config.headers, credentials or {})
        self.oauth = oauth
        self.resolver = resolver
        self.calls: HttpCalls | None = None

    @asynccontextmanager
    async def connect_session(
        self,
        *,
        transport_options: TransportOptions | None = None,
        **session_kwargs: Unpack[SessionKwargs],
    ) -> AsyncIterator[ClientSession]:
        options = transport_options or TransportOptions()
        keep_alive = KeepAlive(session_transport(self.resolver))
        async with (
            httpx2.AsyncClient(
                headers=self.headers,
                timeout=TIMEOUT,
                transport=keep_alive,
                auth=self.oauth.provider if self.oauth is not None else None,
            ) as http_client,
            streamable_http_client(self.url, http_client=http_client, max_sse_event_size=self.limit) as (
                read_stream,
                write_stream,
            ),
            options.session_class(read_stream, write_stream, **session_kwargs) as session,
        ):
            self.calls = HttpCalls(
                self.url, self.headers, keep_alive, self.limit, self.resolver, self.oauth, session
            )
            # The session just reached the server by name: have a last good answer for the
            # calls' own connections before a name server outage can leave them none.
            remember = asyncio.create_task(self.resolver.remember(yarl.URL(self.url)))
            try:
                yield session
            finally:
                remember.cancel()
                calls, self.calls = self.calls, None
                await calls.aclose()


def with_credentials(headers: dict[str, str], credentials: dict[str, str]) -> dict[str, str]:
    """The server's headers with an agent's own in place of those of the same name (header
    names are case-insensitive)."""
    replaced = {name.lower() for name in credentials}
    return {**{k: v for k, v in headers.items() if k.lower() not in replaced}, **credentials}


def _closed_before_answering(exc: httpx2.TransportError) -> bool:
    """A connection reset or closed before any of the answer arrived (the error is raised before
    there is a response); a protocol error about a malformed answer is not that."""
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "without sending" in str(exc) or "Server disconnected" in str(exc)
    return True
