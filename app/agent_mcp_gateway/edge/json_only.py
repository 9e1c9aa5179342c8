"""Plain JSON answers for clients that accept `application/json` but not SSE (`JsonOnly`)."""

from __future__ import annotations

import json

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
