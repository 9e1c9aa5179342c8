"""Drain over stdio: calls in flight are answered before the gateway exits on SIGTERM or EOF.

The SDK's stdio server ends its session as soon as stdin reaches end of file, cancelling the
calls still running, and it reads stdin in a thread nothing can interrupt, so on SIGTERM the
process could only end outright. The gateway therefore puts two pipes between the client and
the SDK, and a relay (hand-written: neither the SDK nor fastmcp drains stdio) forwards lines both
ways, noting the client's requests that have no answer yet. On SIGTERM or EOF it refuses new
work as the HTTP drain does (`initialize`, `tools/call`), forwards everything else so clients
can finish what they started, and once nothing has been unanswered for `LINGER` seconds (at
most `grace` seconds) gives the SDK its end of file: the SDK then finishes in order, as when a
client leaves, and the lifespan closes the downstream servers.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import threading
import time
from types import TracebackType
from typing import Any

from agent_mcp_gateway.edge.drain import CLOSE_SECONDS, LINGER, REFUSED_METHODS
from agent_mcp_gateway.protocol import SERVER_ERROR

log = logging.getLogger("agent_mcp_gateway")

POLL = 0.1  # seconds between checks that the SDK has finished writing


class StdioDrain:
    """Own fd 0 and 1 while the SDK serves, so that shutdown waits for answers.

    Use as a context manager around the SDK's stdio server, and call `stop` on SIGTERM and
    SIGINT; end of file on the client's stdin stops it too.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._pending: set[Any] = set()  # ids of forwarded requests not yet answered
        self._last_change = 0.0  # when `_pending` last lost a member, or the drain began
        self._draining = self._hurry = self._client_gone = False
        self._state = threading.Condition()  # guards the fields above
        self._sdk_done = threading.Event()
        self._to_sdk_lock = threading.Lock()  # a write and the close of `_to_sdk` never overlap
        self._to_client_lock = threading.Lock()  # answers and refusals go out as whole lines
        self._client_in = self._client_out = self._to_sdk = self._from_sdk = -1
        self._answers: threading.Thread | None = None

    def __enter__(self) -> StdioDrain:
        sys.stdout.flush()
        self._client_in, self._client_out = os.dup(0), os.dup(1)
        sdk_in, self._to_sdk = os.pipe()
        self._from_sdk, sdk_out = os.pipe()
        os.dup2(sdk_in, 0)
        os.dup2(sdk_out, 1)
        os.close(sdk_in)
        os.close(sdk_out)
        self._answers = threading.Thread(target=self._relay_answers, name="stdio-answers", daemon=True)
        self._answers.start()
        threading.Thread(target=self._relay_requests, name="stdio-requests", daemon=True).start()
        threading.Thread(target=self._drain, name="stdio-drain", daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """The SDK has finished: pass on the last of what it wrote, give fd 0 and 1 back."""
        self._sdk_done.set()
        if self._answers is not None:
            self._answers.join(CLOSE_SECONDS)
        os.dup2(self._client_in, 0)
        os.dup2(self._client_out, 1)

    def stop(self) -> None:
        """On a signal: begin the drain; a signal during the drain ends it without waiting."""
        with self._state:
            self._hurry = self._draining
            self._begin()

    def _begin(self) -> None:
        """Call with `_state` held."""
        if not self._draining:
            self._draining = True
            self._last_change = time.monotonic()
        self._state.notify_all()

    def _relay_requests(self) -> None:
        try:
            with open(self._client_in, "rb", closefd=False) as client:
                for line in client:
                    self._forward(line)
            log.info("stdin closed; finishing the calls in flight", extra={"in_flight": len(self._pending)})
        finally:  # no more requests can reach the SDK: drain
            with self._state:
                self._begin()

    def _forward(self, line: bytes) -> None:
        message = _parse(line)
        request_id = _request_id(message)
        with self._state:
            refused = request_id is not None and self._draining and message["method"] in REFUSED_METHODS
            if request_id is not None and not refused:
                self._pending.add(request_id)
            cancelled = _cancelled_id(message)
            if cancelled is not None:  # a cancelled request gets no answer
                self._answered(cancelled)
        if not refused:
            with self._to_sdk_lock:
                if self._to_sdk >= 0:
                    _write_all(self._to_sdk, line)
                    return
            if request_id is None:
                return
            with self._state:  # the SDK's stdin closed after the check above
                self._answered(request_id)
        self._refuse(request_id)

    def _relay_answers(self) -> None:
        buffer = bytearray()
        while True:
            ready, _, _ = select.select([self._from_sdk], [], [], POLL)
            if not ready:
                if self._sdk_done.is_set():  # the SDK has finished and all it wrote is read
                    return
                continue
            chunk = os.read(self._from_sdk, 1 << 16)
            if not chunk:
                return
            start = len(buffer)
            buffer += chunk
            while (end := buffer.find(b"\n", start)) >= 0:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                start = 0
                self._to_client(line)
                answered = _response_id(_parse(line))
                if answered is not None:
                    with self._state:
                        self._answered(answered)

    def _answered(self, request_id: Any) -> None:
        """Call with `_state` held."""
        if request_id in self._pending:
            self._pending.discard(request_id)
            self._last_change = time.monotonic()
            self._state.notify_all()

    def _drain(self) -> None:
        with self._state:
            self._state.wait_for(lambda: self._draining)
            deadline = time.monotonic() + self.grace
            while not (self._hurry or self._client_gone):
                now = time.monotonic()
                linger_left = LINGER - (now - self._last_change)
                if now >= deadline or (not self._pending and linger_left <= 0):
                    break
                self._state.wait(deadline - now if self._pending else min(deadline - now, linger_left))
            left = len(self._pending)
        if left:
            log.warning("shutting down with calls still in flight", extra={"in_flight": left})
        with self._to_sdk_lock:
            os.close(self._to_sdk)
            self._to_sdk = -1
        # Closing the downstream servers has timeouts of its own; this bounds the whole exit.
        if not self._sdk_done.wait(CLOSE_SECONDS):
            log.error("shutdown did not finish in time; exiting")
            os._exit(0)

    def _refuse(self, request_id: Any) -> None:
        error = {
            "code": SERVER_ERROR,
            "message": "The gateway is shutting down; send the request again later.",
            "data": {"code": "SHUTTING_DOWN"},
        }
        self._to_client(json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode() + b"\n")

    def _to_client(self, line: bytes) -> None:
        with self._to_client_lock:
            if self._client_gone:
                return
            try:
                _write_all(self._client_out, line)
            except OSError:  # the client closed its end: nothing more can reach it
                with self._state:
                    self._client_gone = True
                    self._state.notify_all()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # the SDK answers these lines itself
        return None


def _request_id(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("method"), str):
        return _id(message.get("id"))
    return None


def _response_id(message: Any) -> Any:
    if isinstance(message, dict) and "method" not in message and ("result" in message or "error" in message):
        return _id(message.get("id"))
    return None


def _cancelled_id(message: Any) -> Any:
    if isinstance(message, dict) and message.get("method") == "notifications/cancelled":
        params = message.get("params")
        return _id(params.get("requestId")) if isinstance(params, dict) else None
    return None


def _id(value: Any) -> Any:
    """A JSON-RPC id as a set key: a string or an integer; anything else is no id."""
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None
