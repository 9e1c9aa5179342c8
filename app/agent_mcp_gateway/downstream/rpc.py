"""One request to a downstream server sent as plain JSON-RPC, beside the SDK session.

The SDK's `ClientSession` sends each request through two memory streams and a task of its
transport's, and validates the request and its answer into models on the way; on the gateway's
hot path (a tool call) that cost as much CPU as the downstream server's whole answer (measured:
benchmarks/bench_gateway.py, README "Performance"). So calls go as one JSON-RPC message written
on the connection the SDK session opened and keeps (its handshake, session id, pings, catalog
reads and notifications between calls stay the SDK's), and the answer comes back as parsed JSON,
validated once by the caller. What a server sends during the call is routed exactly as the
session would route it (`CallMessages`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

from mcp import MCPError

from agent_mcp_gateway.protocol import INTERNAL_ERROR

# Ids of the gateway's own requests: strings, so they never meet the SDK session's integer ids
# on the same connection.
_ids = itertools.count(1)

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TooLarge:
    """The error data of a request whose answer was over the limit (never sent by a server);
    `size` is None when the answer was cut off before its end was seen."""

    size: int | None
    limit: int


class CallMessages(Protocol):
    """What a server sends during one call: progress for it, notifications, and requests of its
    own (elicitation, sampling, roots) that only the calling client may answer."""

    @property
    def wants_progress(self) -> bool: ...

    async def progress(self, params: Message) -> None: ...

    async def notify(self, method: str, params: Message | None) -> None: ...

    async def answer(self, method: str, params: Message | None) -> Message: ...


class Calls(Protocol):
    """A connection that sends requests without the SDK session."""

    async def request(self, method: str, params: Message, messages: CallMessages) -> Message: ...


def new_id() -> str:
    return f"gw-{next(_ids)}"


def request(request_id: str, method: str, params: Message, messages: CallMessages) -> Message:
    """The JSON-RPC request; a progress token (the request's id) only when the caller asked
    for progress, so a server does not report it for nothing."""
    if messages.wants_progress:
        params = {**params, "_meta": {**params.get("_meta", {}), "progressToken": request_id}}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def cancelled(request_id: str, reason: str) -> Message:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }


def is_answer(message: object, request_id: str) -> bool:
    return (
        isinstance(message, dict)
        and message.get("id") == request_id
        and "method" not in message
        and ("result" in message or "error" in message)
    )


def outcome(message: Message) -> Message:
    """The result of an answer, or its JSON-RPC error raised as the SDK raises it."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code = error.get("code")
        raise MCPError(
            code if isinstance(code, int) else INTERNAL_ERROR,
            str(error.get("message", "")),
            error.get("data"),
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise MCPError(INTERNAL_ERROR, "the server's result is not an object")
    return result


async def answer_server_request(message: Message, messages: CallMessages) -> Message:
    """The JSON-RPC response to a request the server sent during a call."""
    request_id = message["id"]
    params = message.get("params")
    try:
        result = await messages.answer(str(message["method"]), params if isinstance(params, dict) else None)
    except MCPError as exc:
        error: Message = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            error["data"] = exc.data
        return {"jsonrpc": "2.0", "id": request_id, "error": error}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


async def route(message: Message, request_id: str, messages: CallMessages) -> None:
    """Deliver a notification sent during the call with id `request_id` (its progress only to
    this call's client)."""
    method = str(message.get("method"))
    params = message.get("params")
    params = params if isinstance(params, dict) else None
    if method == "notifications/progress":
        if params is not None and params.get("progressToken") == request_id and "progress" in params:
            await messages.progress(params)
        return
    await messages.notify(method, params)
