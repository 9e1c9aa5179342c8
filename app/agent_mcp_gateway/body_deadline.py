"""A deadline on reading a request's body, answered 408.

Granian bounds the time to send headers (`header_read_timeout`) but not the body: a client
trickling one byte every few seconds held its connection, and a slot of the worker's connection
limit, for as long as it liked. Written here because neither Granian nor Starlette has one.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .edge import BODY_METHODS, error_response


class BodyDeadline:
    """Pure ASGI middleware, outside whatever reads the body (`RequestBody`).

    Past the deadline the inner app is told the client left (so it stops reading and answers
    nothing), and the client gets 408 with `Connection: close`.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        complete = timed_out = responded = False

        async def bounded() -> Message:
            nonlocal complete, timed_out
            if complete:
                return await receive()
            if not timed_out:
                with anyio.move_on_at(deadline):
                    message = await receive()
                    complete = message["type"] != "http.request" or not message.get("more_body", False)
                    return message
                timed_out = True
            return {"type": "http.disconnect"}

        async def watched(message: Message) -> None:
            nonlocal responded
            responded = True
            await send(message)

        await self.app(scope, bounded, watched)
        if timed_out and not responded:
            response = error_response(
                408, f"The request body did not arrive within {self.seconds:g} seconds.", "BODY_TIMEOUT"
            )
            response.headers["connection"] = "close"
            await response(scope, receive, send)
