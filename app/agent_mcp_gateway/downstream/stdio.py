"""The stdio connection to a downstream server: its process group, and its stdout read line by line.

The SDK's session, dispatcher and message types are used as they are; only the pipe handling is
ours, because the SDK's `stdio_client` (mcp 2.3) does not hold up against real servers:
- it re-joins and re-splits the unfinished line on every 64 KiB read, so a result of n bytes
  costs O(n²) (5 MB took 1.2 s, 20 MB 12.6 s, and a 50 MB one stalled the session long enough
  for its pings to fail, dropping every call on it);
- one line that is not UTF-8 ends its reader, and with it the connection;
- it ends the process group only when the leader outlives its grace period, so the processes
  a crashed (or cleanly exiting) server started are left running.

Here the server runs in its own process group, registered with the gateway's watchdog; lines
are framed in linear time; junk lines are logged (rate-limited) and skipped; a line over the
server's `max_result_bytes` is dropped unread and its request answered with an error, so other
calls on the connection go on; and the whole group is ended when the leader exits or the
connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Unpack

import anyio
import anyio.to_thread
import mcp_types as mt
import pydantic_core
from anyio.abc import Process
from fastmcp.client.transports import ClientTransport
from fastmcp.client.transports.base import SessionKwargs, TransportOptions
from mcp import ClientSession, MCPError
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from agent_mcp_gateway.compat import coerce_request_id, create_context_streams, era_envelope
from agent_mcp_gateway.config import ServerConfig
from agent_mcp_gateway.downstream import rpc as rpc
from agent_mcp_gateway.downstream.messages import current_call
from agent_mcp_gateway.downstream.watchdog import Watchdog, end_groups
from agent_mcp_gateway.errors import ResultTooLarge
from agent_mcp_gateway.observe.metrics import DOWNSTREAM_JUNK_LINES

log = logging.getLogger("agent_mcp_gateway.downstream")

CALL_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})

STDIN_GRACE = 2.0  # seconds a server has to exit after its stdin closes
CANCEL_SECONDS = 5.0  # how long telling a server of a cancelled call may take
JUNK_LOG_INTERVAL = 10.0  # at most one junk warning per server this often
READ_SIZE = 1 << 20
_EDGE = 4096  # bytes kept from each end of an oversize line, to find its request id
_HEAD_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d+|"[^"\\]*")')
_TAIL_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"[^"\\]*")\s*\}\s*$')
_NOT_AN_ANSWER = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"method"')


@dataclass(frozen=True, slots=True)
class _Oversize:
    size: int
    head: bytes
    tail: bytes


class LineFramer:
    """Splits a byte stream into lines in time linear in its size, dropping lines over `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._oversize: _Oversize | None = None

    def feed(self, chunk: bytes) -> list[bytes | _Oversize]:
        lines: list[bytes | _Oversize] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:end])
            lines.append(self._finish())
            start = end + 1
        self._add(chunk[start:])
        return lines

    def _add(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._oversize is not None:
            tail = piece if len(piece) >= _EDGE else self._oversize.tail + piece
            self._oversize = _Oversize(self._size, self._oversize.head, tail[-_EDGE:])
        elif self._size > self.limit:
            parts = [*self._parts, piece]
            self._oversize = _Oversize(self._size, _prefix(parts), _suffix(parts))
            self._parts = []
        else:
            self._parts.append(piece)

    def _finish(self) -> bytes | _Oversize:
        line: bytes | _Oversize = self._oversize or b"".join(self._parts)
        self._parts, self._size, self._oversize = [], 0, None
        return line


class _JunkLog:
    """Logs junk on a server's stdout at most once per interval, counting what it skipped."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._last = -JUNK_LOG_INTERVAL
        self._skipped = 0

    def note(self, line: bytes, problem: str) -> None:
        DOWNSTREAM_JUNK_LINES.labels(self.server).inc()
        now = time.monotonic()
        if now - self._last < JUNK_LOG_INTERVAL:
            self._skipped += 1
            return
        log.warning(
            "downstream wrote a line that is not a JSON-RPC message; skipped",
            extra={
                "server": self.server,
                "problem": problem,
                "bytes": len(line),
                "preview": line[:80].decode("utf-8", "backslashreplace"),
                "skipped_since_last_warning": self._skipped,
            },
        )
        self._last, self._skipped = now, 0


class StdioServerTransport(ClientTransport):
    """A fastmcp transport that starts the server anew for every connection it is asked for."""

    def __init__(self, name: str, config: ServerConfig, watchdog: Watchdog, exclusive: bool = False) -> None:
        assert config.command is not None
        self.name, self.config, self.watchdog = name, config, watchdog
        # One owner's process: every message it sends is its owner's (see `_Connection._owner`).
        self.exclusive = exclusive
        self.last_received = 0.0  # monotonic time bytes last arrived from the server
        self.calls: _Connection | None = None

    @asynccontextmanager
    async def connect_session(
        self,
        *,
        transport_options: TransportOptions | None = None,
        **session_kwargs: Unpack[SessionKwargs],
    ) -> AsyncIterator[ClientSession]:
        options = transport_options or TransportOptions()
        async with (
            _Connection.open(self) as connection,
            options.session_class(
                connection.read_stream, connection.write_stream, **session_kwargs
            ) as session,
        ):
            connection.session = session
            self.calls = connection
            try:
                yield session
            finally:
                self.calls = None


class _Connection:
    """One server process and the two pipe tasks between it and the session; calls are written
    on its stdin beside the session's messages (`request`)."""

    def __init__(self, transport: StdioServerTransport, process: Process) -> None:
        self.transport, self.process, self.pgid = transport, process, process.pid
        self.server = transport.name
        self.limit = transport.config.max_result_bytes
        self.junk = _JunkLog(self.server)
        # Requests sent and not yet answered: id -> (method, the call that sent it).
        self.pending: dict[Any, tuple[str, object | None]] = {}
        # The gateway's own requests (`request`): their answers, and whom their notifications go to.
        self.waiting: dict[str, asyncio.Future[rpc.Message]] = {}
        self.own: dict[str, rpc.CallMessages] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        self.read_done = anyio.Event()
        # The SDK session on this connection: the era its requests are stamped in is ours too.
        self.session: ClientSession | None = None
        self.to_session, self.read_stream = create_context_streams[SessionMessage | Exception](0)
        self.write_stream, self.from_session = create_context_streams[SessionMessage](0)

    @classmethod
    @asynccontextmanager
    async def open(cls, transport: StdioServerTransport) -> AsyncIterator[_Connection]:
        config = transport.config
        assert config.command is not None
        process = await anyio.open_process(
            [config.command, *config.args],
            env=get_default_environment() | dict(config.env),
            cwd=config.cwd,
            stderr=sys.stderr,
            start_new_session=True,
        )
        transport.watchdog.watch(process.pid)  # before any await: no window to leak the group
        connection = cls(transport, process)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(connection._read)
            tasks.start_soon(connection._write)
            tasks.start_soon(connection._watch_leader)
            try:
                yield connection
            finally:
                with anyio.CancelScope(shield=True):
                    await connection._stop()
                tasks.cancel_scope.cancel()

    # --- server to session ----------------------------------------------------------------

    async def _read(self) -> None:
        framer = LineFramer(self.limit)
        assert self.process.stdout is not None
        try:
            async with self.to_session:
                while True:
                    chunk = await self.process.stdout.receive(READ_SIZE)
                    self.transport.last_received = time.monotonic()
                    for line in framer.feed(chunk):
                        await self._deliver(line)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass  # the server, the session or our shutdown closed the pipe: the connection is over
        finally:
            self.read_done.set()
            for waiter in self.waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the server closed its stdout"))

    async def _deliver(self, line: bytes | _Oversize) -> None:
        if isinstance(line, _Oversize):
            await self._refuse(line)
            return
        if not line.strip():
            return
        try:
            parsed = pydantic_core.from_json(line)
        except ValueError:
            self.junk.note(line, _problem(line))
            return
        if await self._own(parsed):
            return
        try:
            message = mt.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
        except ValidationError:
            self.junk.note(line, "JSON but not a JSON-RPC message")
            return
        owner = None
        if isinstance(message, mt.JSONRPCResponse | mt.JSONRPCError) and message.id is not None:
            self.pending.pop(coerce_request_id(message.id), None)
        elif isinstance(message, mt.JSONRPCNotification | mt.JSONRPCRequest):
            owner = self._owner()
        token = current_call.set(owner)
        try:
            await self.to_session.send(SessionMessage(message))
        finally:
            current_call.reset(token)

    async def _own(self, message: object) -> bool:
        """Take the answer to one of the gateway's own requests, and the notifications that
        belong to one; the session never sees them. Those notifications are delivered here, in
        the order they were read, before the answer after them: handed to the session they
        would be handled on its task, and the caller could get its answer first and lose
        them (seen: a log message sent just before the answer)."""
        if not isinstance(message, dict):
            return False
        request_id = message.get("id")
        if isinstance(request_id, str) and rpc.is_answer(message, request_id):
            waiter = self.waiting.get(request_id)
            if waiter is None:
                return False
            self.pending.pop(request_id, None)
            if not waiter.done():
                waiter.set_result(message)
            return True
        if "id" in message or not isinstance(message.get("method"), str):
            return False
        owner = self._own_call(message)
        if owner is None:
            return False
        await rpc.route(message, *owner)
        return True

    def _own_call(self, notification: rpc.Message) -> tuple[str, rpc.CallMessages] | None:
        """The gateway's request a notification belongs to: the one its progress token names,
        else, on one owner's process, the only call waiting for its answer, if that is ours."""
        if notification["method"] == "notifications/progress":
            params = notification.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            messages = self.own.get(token) if isinstance(token, str) else None
            return (token, messages) if isinstance(token, str) and messages is not None else None
        if not self.transport.exclusive:
            return None
        waiting = self._waiting_call()
        request_id = waiting[0] if waiting is not None else None
        if not isinstance(request_id, str) or request_id not in self.own:
            return None
        return request_id, self.own[request_id]

    async def request(self, method: str, params: rpc.Message, messages: rpc.CallMessages) -> rpc.Message:
        """Send one request on stdin and wait for its answer, which `_own` takes off stdout."""
        assert self.process.stdin is not None
        request_id = rpc.new_id()
        if self.session is not None:
            params, _ = era_envelope(self.session, method, params)
        message = rpc.request(request_id, method, params, messages)
        waiter: asyncio.Future[rpc.Message] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = waiter
        self.pending[request_id] = (method, current_call.get())
        self.own[request_id] = messages
        try:
            await self.process.stdin.send(pydantic_core.to_json(message) + b"\n")
            return rpc.outcome(await waiter)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            raise ConnectionError("the server closed its stdin") from None
        except asyncio.CancelledError:
            self._tell_cancelled(request_id)
            raise
        finally:
            self.waiting.pop(request_id, None)
            self.pending.pop(request_id, None)
            self.own.pop(request_id, None)

    def _tell_cancelled(self, request_id: str) -> None:
        """Tell the server a call was given up, as the SDK session does, without holding up
        the caller's cancellation."""
        stdin = self.process.stdin
        assert stdin is not None
        line = pydantic_core.to_json(rpc.cancelled(request_id, "the caller gave up")) + b"\n"

        async def send() -> None:
            with anyio.move_on_after(CANCEL_SECONDS):
                await _quietly(stdin.send(line))

        task = asyncio.create_task(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    def _owner(self) -> object | None:
        """The call a notification or a server's request belongs to: on stdio nothing names it,
        so only on one owner's process (where any call is the owner's) and only when exactly one
        call is waiting for its answer at the moment it is read. On a process all agents share,
        a message sent after its call returned would otherwise reach whichever other agent's
        call is the one waiting, so there it belongs to none."""
        if not self.transport.exclusive:
            return None
        waiting = self._waiting_call()
        return waiting[1] if waiting is not None else None

    def _waiting_call(self) -> tuple[Any, object | None] | None:
        """The request id and call of the only call waiting for its answer, if only one is."""
        calls = [
            (request_id, call)
            for request_id, (method, call) in self.pending.items()
            if method in CALL_METHODS
        ]
        return calls[0] if len(calls) == 1 else None

    async def _refuse(self, line: _Oversize) -> None:
        """Answer the request an oversize line was the answer to with an error of our own."""
        request_id = self._oversize_id(line)
        log.warning(
            "downstream message over max_result_bytes dropped",
            extra={"server": self.server, "bytes": line.size, "limit": self.limit, "rpc_id": request_id},
        )
        if request_id is None:
            return
        self.pending.pop(coerce_request_id(request_id), None)
        too_large = rpc.TooLarge(line.size, self.limit)
        if (waiter := self.waiting.get(request_id)) is not None:
            if not waiter.done():
                waiter.set_exception(MCPError(ResultTooLarge.code, "result too large", too_large))
            return
        error = mt.ErrorData(code=ResultTooLarge.code, message="result too large", data=too_large)
        await self.to_session.send(SessionMessage(mt.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))

    def _oversize_id(self, line: _Oversize) -> Any:
        """The pending request an oversize answer names first (Python servers) or last (Node
        servers), else the only request pending; None when it cannot be told (or the line is a
        notification or a request of the server's own)."""
        if _NOT_AN_ANSWER.match(line.head):
            return None
        for pattern, edge in ((_HEAD_ID, line.head), (_TAIL_ID, line.tail)):
            match = pattern.search(edge)
            if match is not None:
                raw = match.group(1)
                request_id: Any = raw[1:-1].decode() if raw.startswith(b'"') else int(raw)
                if coerce_request_id(request_id) in self.pending:
                    return request_id
        if len(self.pending) == 1:
            return next(iter(self.pending))
        return None

    # --- session to server ----------------------------------------------------------------

    async def _write(self) -> None:
        assert self.process.stdin is not None
        try:
            async with self.from_session:
                async for session_message in self.from_session:
                    message = session_message.message
                    if isinstance(message, mt.JSONRPCRequest):
                        sender = self.from_session.last_context
                        call = sender.get(current_call) if sender is not None else None
                        self.pending[coerce_request_id(message.id)] = (message.method, call)
                    elif (
                        isinstance(message, mt.JSONRPCNotification)
                        and message.method == "notifications/cancelled"
                    ):
                        cancelled = (message.params or {}).get("requestId")
                        if cancelled is not None:
                            self.pending.pop(coerce_request_id(cancelled), None)
                    data = message.model_dump_json(by_alias=True, exclude_unset=True)
                    await self.process.stdin.send(data.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server stopped reading: end the session rather than leave requests hanging.
            await self.to_session.aclose()

    # --- process lifetime -------------------------------------------------------------------

    async def _watch_leader(self) -> None:
        """When the server exits, end its group at once: what it started would otherwise outlive
        it (and its restart), and may hold stdout open, so the session would never see the end."""
        await self.process.wait()
        await _end_group(self.pgid)
        with anyio.move_on_after(1):
            await self.read_done.wait()  # what the server wrote before it exited is delivered
        await self.to_session.aclose()

    async def _stop(self) -> None:
        """Close stdin, give the server its grace period, then end the whole group."""
        self.write_stream.close()
        self.read_stream.close()
        assert self.process.stdin is not None and self.process.stdout is not None
        await _quietly_close(self.process.stdin)
        with anyio.move_on_after(STDIN_GRACE):
            await self.process.wait()
        await _end_group(self.pgid)
        self.transport.watchdog.forget(self.pgid)
        with anyio.move_on_after(1):
            await _quietly_close(self.process)


async def _end_group(pgid: int) -> None:
    """SIGTERM the group, then SIGKILL what is left after the grace period."""
    await anyio.to_thread.run_sync(end_groups, [pgid])


async def _quietly_close(resource: Any) -> None:
    await _quietly(resource.aclose())


async def _quietly(operation: Awaitable[None]) -> None:
    """A pipe operation whose failure means only that the other end is gone."""
    try:
        await operation
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


def _prefix(parts: list[bytes]) -> bytes:
    head = b""
    for part in parts:
        head += part[: _EDGE - len(head)]
        if len(head) >= _EDGE:
            break
    return head


def _suffix(parts: list[bytes]) -> bytes:
    """The last `_EDGE` bytes of `parts` joined (an id may straddle the read that crossed the limit)."""
    tail = b""
    for part in reversed(parts):
        tail = part[max(0, len(part) - (_EDGE - len(tail))) :] + tail
        if len(tail) >= _EDGE:
            break
    return tail


def _problem(line: bytes) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    return "not JSON"
