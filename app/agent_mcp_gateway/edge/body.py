"""Reading the request body once, within its size and time limits, and checking it is one
bounded JSON-RPC 2.0 message (`RequestBody`); it notes the caller's claimed agent id for the
audit of refusals."""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_mcp_gateway.access.identity import RequestFacts, facts_of
from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.protocol import (
    AGENT_HEADER,
)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Bounds on what a message may carry, well below the body limit where the protocol allows it:
# an `initialize` or a `ping` is a few KB, so only tool calls and answers to the gateway's own
# requests may use the whole body limit. Far deeper than any real schema or argument.
MAX_JSON_DEPTH = 64
SMALL_MESSAGE_BYTES = 64 * 1024
LARGE_METHODS = frozenset({"tools/call"})


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
        current.message = message
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
