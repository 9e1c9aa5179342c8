"""A fork server for the stdio fixture servers: imported fastmcp and the SDK once, it forks a
child per start that runs a fixture script (`_launch.py` asks for it), so a start costs
about 0.2 s of CPU instead of the 2 s an interpreter importing fastmcp takes.

`python _forkserver.py SOCKET` listens on the Unix socket SOCKET (SOCK_SEQPACKET). A request is
one message, JSON {argv, env, cwd}, carrying the launcher's stdin, stdout and stderr; the child
takes them as its own, runs argv[0] as __main__, and sends its exit status back on the
connection. It exits at once when the launcher's end closes (the launcher was stopped or killed).
The fork server ends on SIGTERM (its children stopped and waited for) or when its parent is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import signal
import socket
import sys
import threading
import traceback

# _common first: its quiet fastmcp settings must be in the environment before fastmcp is imported.
# isort: off
import _common  # noqa: F401
# isort: on

# What the fixtures import, and what serving over stdio imports on the way (fastmcp's are lazy).
import anyio._backends._asyncio  # noqa: F401
import mcp.server.stdio  # noqa: F401
from fastmcp import Client, Context, FastMCP
from fastmcp.exceptions import ToolError  # noqa: F401
from fastmcp.prompts import Message  # noqa: F401
from fastmcp.server.dependencies import get_http_headers  # noqa: F401
from fastmcp.tools import Tool, ToolResult  # noqa: F401
from mcp.server.mcpserver import MCPServer  # noqa: F401


def warm() -> None:
    """Serve a throwaway server once in memory: what answering a call imports on first use
    (fastmcp imports lazily, a few hundred modules) is then imported before any fork. Its
    handlers are async, so no worker thread is left behind to fork with."""
    server = FastMCP("warm")

    @server.tool
    async def tool(text: str, ctx: Context) -> str:
        """Log `text` and return it (a docstring: the fixtures' descriptions are parsed).

        Args:
            text: what to return.
        """
        await ctx.info(text)
        return text

    @server.prompt
    async def prompt(name: str) -> str:
        return name

    @server.resource("warm://note")
    async def note() -> str:
        return "note"

    async def serve() -> None:
        async with Client(server) as client:
            await client.list_tools()
            await client.call_tool("tool", {"text": "warm"})
            await client.get_prompt("prompt", {"name": "warm"})
            await client.read_resource("warm://note")

    asyncio.run(serve())
    assert threading.active_count() == 1, threading.enumerate()


def serve_child(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    """In the forked child: become the fixture server the launcher asked for."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(request["cwd"]))
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    argv = [str(arg) for arg in request["argv"]]  # type: ignore[attr-defined]
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))

    def orphaned() -> None:
        connection.recv(1)  # returns only when the launcher's end closes
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    status = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        connection.send(bytes([status & 0xFF]))
    except OSError:
        pass
    os._exit(status)


children: set[int] = set()


def reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        children.discard(pid)


def stop(*_: object) -> None:
    """Stop the servers still running and wait for them."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            continue
    sys.exit(0)


def main() -> None:
    warm()
    # Children are reaped as they end, and waited for at the end, so that their CPU time counts
    # as this process's children's (what `time pytest` reports).
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, stop)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(sys.argv[1])
    listener.listen(64)
    listener.settimeout(1.0)
    parent = os.getppid()
    while True:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test process is gone: so is the need for this one
                stop()
            continue
        connection.settimeout(None)
        try:
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            request = json.loads(message)
        except (OSError, ValueError):
            connection.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve_child(connection, request, fds)
        children.add(pid)
        connection.close()
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()
