"""Drain over HTTP: on SIGTERM the Granian worker finishes its calls before it stops.

Granian stops a worker by closing its listener and waiting for every open connection, so an idle
SSE stream held shutdown for the whole kill timeout, and fastmcp clients lost their results all
the same: on a result the client lists the tools (to check the output schema) before returning
it, and that request found the listener closed. So the worker takes SIGTERM for itself (written
here: neither Granian nor the SDK drains an ASGI app):

- new work is refused with 503 (`initialize`, `tools/call`, new streams), and /ready says 503;
- standing streams (GET /mcp, `subscriptions/listen`) end at once, cleanly;
- any other request is served, so clients can finish what they started;
- once nothing has been in flight for `LINGER` seconds, or `grace` has passed (what is still
  running is then cut), Granian is told to stop with SIGINT, its other stop signal; it closes
  the idle connections and the lifespan closes the downstream servers.

The worker also asks Linux for a SIGTERM when its parent, Granian's main process, dies, so a
SIGKILL of the main process does not leave the worker serving on its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_mcp_gateway.access.identity import facts_of
from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.protocol import MCP_PATH, SERVER_ERROR

log = logging.getLogger("agent_mcp_gateway.http")

CLOSE_SECONDS = 10  # after a drain, how long closing the downstream servers may take
LINGER = 0.5  # seconds without a request in flight before the worker stops
REFUSED_METHODS = frozenset({"initialize", "tools/call"})
STREAM_METHODS = frozenset({"subscriptions/listen"})
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Drain:
    """Pure ASGI middleware; sits after `RequestBody`, which notes each message's method."""

    def __init__(self, app: ASGIApp, grace: float) -> None:
        self.app = app
        self.grace = grace
        self._draining = False
        self._closing = anyio.Event()  # set when the drain starts: standing streams end
        self._in_flight: set[anyio.CancelScope] = set()
        self._last_done = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._watch_startup(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = facts_of(scope).method
        standing = (scope["method"] == "GET" and scope["path"] == MCP_PATH) or method in STREAM_METHODS
        if self._draining and (standing or method in REFUSED_METHODS or scope["path"] == "/ready"):
            await self._refuse(scope, receive, send)
        elif standing:
            await self._stream(scope, receive, send)
        else:
            await self._request(scope, receive, send)

    def _watch_startup(self, send: Send) -> Send:
        """Take SIGTERM once the server has started the app (so only in a served process)."""

        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.start)
                die_with_parent()
            await send(message)

        return watched

    def start(self) -> None:
        """Begin the drain (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        self._draining = True
        self._closing.set()
        log.info("draining", extra={"in_flight": len(self._in_flight), "grace_seconds": self.grace})
        started = time.monotonic()
        while time.monotonic() - started < self.grace:
            quiet = time.monotonic() - max(self._last_done, started)
            if not self._in_flight and quiet >= LINGER:
                break
            await anyio.sleep(0.05)
        else:
            log.warning(
                "shutdown grace over; cutting requests in flight", extra={"in_flight": len(self._in_flight)}
            )
            for scope in list(self._in_flight):
                scope.cancel()
        log.info("drained; stopping", extra={"seconds": round(time.monotonic() - started, 3)})
        signal.raise_signal(signal.SIGINT)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cut:
            self._in_flight.add(cut)
            try:
                await self.app(scope, receive, send)
            finally:
                self._in_flight.discard(cut)
                self._last_done = time.monotonic()

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a standing stream; at the drain the app is told the client left, and the stream
        is ended with its last chunk so the client sees a clean end rather than a reset."""
        finished = started = False

        async def until_closing() -> Message:
            message: Message = {"type": "http.disconnect"}
            if self._closing.is_set():
                return message
            async with anyio.create_task_group() as race:

                async def take() -> None:
                    nonlocal message
                    message = await receive()
                    race.cancel_scope.cancel()

                race.start_soon(take)
                await self._closing.wait()
                race.cancel_scope.cancel()
            return message

        async def watched(message: Message) -> None:
            nonlocal finished, started
            started = started or message["type"] == "http.response.start"
            finished = message["type"] == "http.response.body" and not message.get("more_body", False)
            await send(message)

        await self.app(scope, until_closing, watched)
        if started and not finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/ready":
            response = JSONResponse({"status": "draining"}, status_code=503)
        else:
            response = error_response(
                scope,
                503,
                "The gateway is shutting down; send the request again later.",
                "SHUTTING_DOWN",
                code=SERVER_ERROR,
            )
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def die_with_parent() -> None:
    """Have Linux send this process SIGTERM when the process that started it dies."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot follow the parent process", extra={"errno": ctypes.get_errno()})
        return
    if os.getppid() != parent.pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
