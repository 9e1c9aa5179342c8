"""The HTTP edge: what every request passes before it reaches the MCP session manager.

Each class is a small pure-ASGI middleware (no buffering of streamed responses) doing one job:
request ids, access logs, HTTP metrics and the session registry (`RequestContext`); browser
Origin checks (`OriginGuard`); reading the body within its size and time limits, and the peek at
who is calling (`RequestBody`); and JSON answers for clients that do not accept SSE
(`JsonOnly`). CORS is Starlette's middleware, wired in `http.py`. What they learn of the caller
goes into the request's `RequestFacts` in the ASGI scope (`access.identity`), which every layer
below reads.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_mcp_gateway.access.identity import FACTS_SCOPE_KEY, RequestFacts, facts_of
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.metrics import http_series
from agent_mcp_gateway.protocol import (
    AGENT_HEADER,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MCP_PATH,
    MCP_PATHS,
    METADATA_PATH,
    REQUEST_ID_HEADER,
    SESSION_HEADER,
)
from agent_mcp_gateway.sessions.registry import SessionRegistry
from agent_mcp_gateway.settings import is_loopback_host

log = logging.getLogger("agent_mcp_gateway.http")

KNOWN_ROUTES = {*MCP_PATHS, "/", "/health", "/ready", "/metrics", METADATA_PATH, f"{METADATA_PATH}/mcp"}
KNOWN_METHODS = {"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"}  # bounded labels
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Bounds on what a message may carry, well below the body limit where the protocol allows it:
# an `initialize` or a `ping` is a few KB, so only tool calls and answers to the gateway's own
# requests may use the whole body limit. Far deeper than any real schema or argument.
MAX_JSON_DEPTH = 64
SMALL_MESSAGE_BYTES = 64 * 1024
LARGE_METHODS = frozenset({"tools/call"})


def error_response(
    scope: Scope, status: int, message: str, name: str, code: int = INVALID_REQUEST, **fields: Any
) -> JSONResponse:
    """A JSON-RPC shaped error body (answering the request's id), so MCP clients can show the
    message."""
    return JSONResponse(
        {
            "jsonrpc": "2.0",
            "id": facts_of(scope).rpc_id,
            "error": {"code": code, "message": message, "data": {"code": name, **fields}},
        },
        status_code=status,
    )


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
                self.sessions.open(issued, principal.agent_id if principal else None)
        elif facts.session_refused:
            return  # a caller refused a session it does not own must not end it for its owner
        elif method == "DELETE" and status < 300:
            # Only the owner's DELETE (or expiry) ends a session: a 404 also answers an OPTIONS
            # or a GET from anyone who knows the id, which must not end it for its owner.
            self.sessions.close(sent)
        else:
            self.sessions.touch(sent)


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


class RequestBody:
    """Refuse bodies over the limit (413) or slower than the deadline (408), and messages that
    are not one bounded JSON-RPC 2.0 object (-32600), and note the caller's claimed agent id for
    the audit of refusals.

    The body is read once here (it is bounded) and replayed to the app unchanged. Invalid
    JSON is left to the SDK, which answers -32700; a well-formed body of the wrong shape is
    answered here because the SDK reports it as -32602 with a validation dump. The deadline is
    here because Granian bounds the time to send headers (`header_read_timeout`) but not the
    body, and neither it nor Starlette has one: a client trickling one byte every few seconds
    held its connection, and a slot of the worker's connection limit, for as long as it liked.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        with anyio.move_on_after(self.seconds) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            late = f"The request body did not arrive within {self.seconds:g} seconds."
            response = error_response(scope, 408, late, "BODY_TIMEOUT")
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        problem = self._inspect(body, headers, facts_of(scope))
        if problem is not None:
            invalid = error_response(scope, 400, f"Invalid Request: {problem}.", "INVALID_REQUEST")
            await invalid(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(
            scope,
            413,
            f"Request body is larger than {self.max_bytes} bytes.",
            "BODY_TOO_LARGE",
            max_bytes=self.max_bytes,
        )(scope, receive, send)

    @staticmethod
    def _inspect(body: bytes, headers: Headers, current: RequestFacts) -> str | None:
        """Note who is calling; return what is wrong with the message, if anything.

        The only parse of the body in the gateway; the SDK's transport parses it again into its
        own message model (it takes the body, not a parsed message), which cannot be avoided
        without replacing the transport.
        """
        current.header_agent = current.claimed_agent = headers.get(AGENT_HEADER)
        try:
            message = json.loads(body)
        except RecursionError:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(message, dict):
            return "the body must be one JSON-RPC 2.0 message object (batches are not supported)"
        if isinstance(message.get("id"), str | int) and not isinstance(message.get("id"), bool):
            current.rpc_id = message["id"]
        if message.get("jsonrpc") != "2.0":
            return "'jsonrpc' must be \"2.0\""
        if "id" in message and (isinstance(message["id"], bool) or not isinstance(message["id"], str | int)):
            return "'id' must be a string or an integer"
        method = message.get("method")
        if method is None and "result" not in message and "error" not in message:
            return "a message needs a 'method' (or a 'result' or 'error')"
        if method is not None and not isinstance(method, str):
            return "'method' must be a string"
        current.method = method[:64] if method else None
        if _too_deep(message):
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if method is not None and method not in LARGE_METHODS and len(body) > SMALL_MESSAGE_BYTES:
            return f"a '{method[:64]}' message carries at most {SMALL_MESSAGE_BYTES} bytes"
        params = message.get("params")
        arguments = params.get("arguments") if isinstance(params, dict) else None
        if isinstance(arguments, dict) and isinstance(arguments.get("agent_id"), str):
            current.claimed_agent = arguments["agent_id"][:200]
        return None


def _too_deep(value: Any) -> bool:
    """Whether any container in `value` sits deeper than MAX_JSON_DEPTH (iterative: no
    recursion for a hostile input to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


class JsonOnly:
    """Answer with plain JSON when the client accepts `application/json` but not SSE.

    The SDK picks JSON or SSE per server, not per request, and refuses (406) a client that does
    not accept both in SSE mode. The gateway keeps SSE (it carries progress notifications) and,
    for a JSON-only client, reads the SSE answer to its end and returns its JSON-RPC response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self._json_only(scope):
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"accept"] + [
            (b"accept", b"application/json, text/event-stream")
        ]
        start: Message | None = None
        body = bytearray()

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, collect)
        if start is None:
            return
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        payload = bytes(body)
        if headers.get("content-type", "").startswith("text/event-stream"):
            payload = _last_sse_response(payload)
            for name in (
                "content-type",
                "cache-control",
                "connection",
                "transfer-encoding",
                "x-accel-buffering",
            ):
                del headers[name]
            headers["content-type"] = "application/json"
        headers["content-length"] = str(len(payload))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers.raw})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    @staticmethod
    def _json_only(scope: Scope) -> bool:
        accept = Headers(scope=scope).get("accept", "")
        types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
        return "application/json" in types and not types & {"text/event-stream", "text/*", "*/*"}


def _last_sse_response(stream: bytes) -> bytes:
    """The JSON-RPC response (a message with an id and a result or error) in an SSE stream."""
    found = b""
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            found = data
    return found
