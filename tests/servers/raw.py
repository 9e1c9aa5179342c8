"""Raw fixture: a stdio MCP server written against the wire, with no SDK, to misbehave on purpose.

SDK servers keep stray output off the protocol channel, so this one is plain JSON-RPC over
stdin/stdout (standard library only, so it also starts fast): it writes junk lines to stdout
(`junk`, and at start-up with RAW_BANNER=1), answers with JSON-RPC errors whose messages carry a
traceback and file paths, starts a grandchild that holds its stdout, crashes on request, sends
log notifications during a call, and returns results of any size with the id first (as Python
SDKs write it) or last (as Node does).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

OUT = sys.stdout.buffer
EXTENSIONS = os.environ.get("RAW_EXTENSIONS", "{}")
JUNK = [
    b"Server starting up... (a banner on the wrong stream)",
    b"\xff\xfe\x00 not UTF-8 \xc3\x28",
    b'{"hello": "JSON, but not JSON-RPC"}',
    b"[1, 2",
    b"",
]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/secret-project/handlers.py", line 42, in call\n'
    "    raise LookupError(key)\n"
    "LookupError: /home/alice/.config/raw/credentials.json"
)


def _tool(name: str, description: str, **properties: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {key: {"type": kind} for key, kind in properties.items()}}
    return {"name": name, "description": description, "inputSchema": schema}


TOOLS = [
    _tool("echo", "Return the text.", text="string"),
    _tool("pid", "This server's process id."),
    _tool("junk", "Write `lines` junk lines to stdout, then answer.", lines="integer"),
    _tool("fail_rpc", "Answer with a JSON-RPC error carrying a traceback.", code="integer"),
    _tool("spawn_sleeper", "Start `sleep 300` (holding this server's stdout); its pid."),
    _tool("crash", "Exit at once without answering."),
    _tool("sleep", "Sleep, then answer.", seconds="number"),
    _tool("blob", "A text result of `size` characters.", size="integer", id_last="boolean"),
    _tool(
        "chatter",
        "Send n log messages carrying `tag`, `delay` seconds apart.",
        tag="string",
        n="integer",
        delay="number",
    ),
]
children: list[subprocess.Popen[bytes]] = []


def send(message: dict[str, Any], id_last: bool = False) -> None:
    if id_last:  # {"result": ..., "jsonrpc": "2.0", "id": N}, the order Node servers write
        message = {key: message[key] for key in ("result", "jsonrpc", "id")}
    OUT.write(json.dumps(message).encode() + b"\n")
    OUT.flush()


def text_result(value: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": str(value)}], "structuredContent": {"result": value}}


async def call(request_id: Any, name: str, args: dict[str, Any]) -> None:
    if name == "echo":
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result(args["text"])})
    elif name == "pid":
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result(os.getpid())})
    elif name == "junk":
        for index in range(int(args["lines"])):
            OUT.write(JUNK[index % len(JUNK)] + b"\n")
        OUT.flush()
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result("junk written")})
    elif name == "fail_rpc":
        error = {"code": int(args.get("code", -32099)), "message": TRACEBACK, "data": {"path": "/srv/secret"}}
        send({"jsonrpc": "2.0", "id": request_id, "error": error})
    elif name == "spawn_sleeper":
        children.append(subprocess.Popen(["sleep", "300"]))
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result(children[-1].pid)})
    elif name == "crash":
        os._exit(1)
    elif name == "sleep":
        await asyncio.sleep(float(args["seconds"]))
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result("slept")})
    elif name == "chatter":
        for step in range(1, int(args["n"]) + 1):
            params = {"level": "info", "data": f"{args['tag']} {step}"}
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": params})
            await asyncio.sleep(float(args["delay"]))
        send({"jsonrpc": "2.0", "id": request_id, "result": text_result(f"{args['tag']} done")})
    elif name == "blob":
        result = {"content": [{"type": "text", "text": "x" * int(args["size"])}]}
        send({"jsonrpc": "2.0", "id": request_id, "result": result}, id_last=bool(args.get("id_last")))


async def handle(message: dict[str, Any]) -> None:
    method, request_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if request_id is None or method is None:
        return  # notifications and answers need no reply
    if method == "initialize":
        result = {
            "protocolVersion": params["protocolVersion"],
            # RAW_EXTENSIONS: SEP-2133 extensions to declare, as JSON
            "capabilities": {"tools": {}, "logging": {}, "extensions": json.loads(EXTENSIONS)},
            "serverInfo": {"name": "raw", "version": "1.0"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        await call(request_id, params["name"], params.get("arguments") or {})
        return
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}})
        return
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


async def main() -> None:
    if os.environ.get("RAW_BANNER"):
        OUT.write(b"\n".join(JUNK) + b"\n")
        OUT.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())
