"""The gateway's stdin and stdout as streams of its event loop, for the SDK's stdio server.

The SDK's `stdio_server()` reads and writes the process's stdio through anyio's file wrapper,
which runs every `readline`, `write` and `flush` in a worker thread: three thread hops per call
on the stdio front (measured with py-spy: 17 % of the time the gateway held the GIL went to them
and the worker threads; the gateway's CPU per call 3.1 ms without them against 3.3-3.5 ms with).
Here both pipes are read and written by the event loop. As the SDK does, fd 0 and 1 are pointed
at the null device and stderr while serving (stray output of a handler never reaches the wire)
and given back after.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

LINE_LIMIT = 1 << 30  # bytes buffered for one line before reading pauses (the SDK's reader had none)


class PipeLines:
    """The client's lines as text, as the SDK's stdio server iterates its stdin."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> PipeLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", "replace")


class PipeWriter:
    """The answers' pipe, written as the SDK's stdio server writes its stdout."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode())

    async def flush(self) -> None:
        await self._writer.drain()


@asynccontextmanager
async def loop_stdio() -> AsyncIterator[tuple[PipeLines, PipeWriter]]:
    """fd 0 and 1 as event-loop streams, the descriptors themselves diverted meanwhile."""
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(wire_in), "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(wire_out), "wb", buffering=0)
    )
    # `flush` returns once every byte is in the pipe, as the blocking write did: nothing is left
    # in the transport's buffer when the server ends.
    write_transport.set_write_buffer_limits(0)
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        yield PipeLines(reader), PipeWriter(writer)
    finally:
        read_transport.close()
        write_transport.close()
        os.dup2(wire_in, 0)
        os.dup2(wire_out, 1)
        os.close(wire_in)
        os.close(wire_out)
