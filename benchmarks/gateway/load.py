"""The load generator: raw JSON-RPC clients over HTTP (`Session`, both protocol eras) and over
stdio (`StdioSession`), and the ways the phases drive them (warm-up, alternated sequential
calls, many sessions opened and calling at once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx2

from .common import ACCEPT, MODERN, PROTOCOL, TOKEN, BenchError, summarize_ms
from .stack import Stack, cpu_seconds, established_connections, own_cpu_seconds


def jsonrpc_response(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response to `request_id` in a JSON or SSE answer."""
    if response.status_code != 200:
        raise BenchError(f"HTTP {response.status_code}: {response.text[:300]}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = response.text.replace("\r\n", "\n").replace("\r", "\n")
        for event in text.split("\n\n"):
            data = "\n".join(line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:"))
            if not data:
                continue
            message = json.loads(data)
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
        raise BenchError(f"no response to request {request_id} in the SSE stream: {text[:300]!r}")
    message = response.json()
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise BenchError(f"unexpected JSON-RPC answer: {response.text[:300]}")
    return message


class EchoCalls:
    """`call` and `echo` over a client's `request`: the same for the HTTP and the stdio client.
    What `echo` calls: `echo` directly (`gateway=False`), `execute_tool {server, tool: echo}` on
    the gateway, or `tool` by name (an aggregate view's `{server}__echo`)."""

    gateway: bool
    server: str
    tool: str | None = None
    over = ""  # how the client reaches its server, for error messages

    async def request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
        raise NotImplementedError

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """A tools/call that must succeed: its result and the seconds it took."""
        message, elapsed = await self.request("tools/call", {"name": name, "arguments": arguments})
        result = message.get("result")
        if not isinstance(result, dict) or result.get("isError"):
            raise BenchError(f"tools/call {name}{self.over} failed: {json.dumps(message)[:300]}")
        return result, elapsed

    async def echo(self, text: str) -> float:
        """One echo call; the seconds it took."""
        if self.tool is not None:
            name, arguments = self.tool, {"text": text}
        elif self.gateway:
            name = "execute_tool"
            arguments = {"server": self.server, "tool": "echo", "args": {"text": text}}
        else:
            name, arguments = "echo", {"text": text}
        result, elapsed = await self.call(name, arguments)
        check_echo(result, text)
        return elapsed


class Session(EchoCalls):
    """One MCP client over its own HTTP connection, in either protocol era.

    2025-11-25: `initialize` opens a session whose id every later request carries.
    2026-07-28: no handshake and no session; every request carries the protocol version and the
    client's capabilities in `params._meta`, and the routing headers (`Mcp-Method`, `Mcp-Name`).
    What it calls: `echo` directly (`gateway=False`), `execute_tool {server, tool: echo}` on the
    gateway, or `tool` by name (an aggregate view's `{server}__echo`). With `client`, the session
    shares that client's keep-alive connections with other sessions instead of owning one.
    """

    def __init__(
        self,
        url: str,
        gateway: bool,
        timeout: float = 60.0,
        era: str = PROTOCOL,
        server: str = "echo",
        tool: str | None = None,
        token: str = TOKEN,
        keepalive: bool = True,
        client: httpx2.AsyncClient | None = None,
        session_required: bool = True,
    ) -> None:
        self.url = url
        self.session_required = session_required  # False: a stateless server answers without one
        self.gateway = gateway
        self.era = era
        self.server = server
        self.tool = tool
        self.owns_client = client is None
        self.client = client or httpx2.AsyncClient(
            timeout=timeout,
            trust_env=False,
            limits=httpx2.Limits(max_connections=1, max_keepalive_connections=int(keepalive)),
        )
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if gateway:
            self.headers["Authorization"] = f"Bearer {token}"
        if era == MODERN:
            self.headers["MCP-Protocol-Version"] = MODERN
        self.next_id = 0
        self.session_id: str | None = None

    def _body(self, method: str, params: dict[str, Any] | None, notify: bool = False) -> tuple[int, bytes]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if notify:
            return -1, json.dumps(message).encode()
        self.next_id += 1
        message["id"] = self.next_id
        return self.next_id, json.dumps(message).encode()

    async def open(self) -> None:
        if self.era == MODERN:
            return
        request_id, body = self._body(
            "initialize",
            {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        )
        response = await self.client.post(self.url, content=body, headers=self.headers)
        message = jsonrpc_response(response, request_id)
        if "result" not in message:
            raise BenchError(f"initialize failed: {message}")
        self.session_id = response.headers.get("mcp-session-id")
        if not self.session_id and self.session_required:
            raise BenchError("initialize returned no Mcp-Session-Id")
        if self.session_id:
            self.headers["Mcp-Session-Id"] = self.session_id
        self.headers["MCP-Protocol-Version"] = PROTOCOL
        _, body = self._body("notifications/initialized", None, notify=True)
        response = await self.client.post(self.url, content=body, headers=self.headers)
        if response.status_code not in (200, 202, 204):
            raise BenchError(f"notifications/initialized: HTTP {response.status_code}")

    async def request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """One JSON-RPC request: its response and the seconds it took."""
        headers = self.headers
        if self.era == MODERN:
            params = {**params, "_meta": MODERN_META}
            headers = {**headers, "Mcp-Method": method}
            if "name" in params:
                headers["Mcp-Name"] = params["name"]
        request_id, body = self._body(method, params)
        started = time.perf_counter()
        response = await self.client.post(self.url, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        return jsonrpc_response(response, request_id), elapsed

    async def close(self) -> None:
        try:
            if self.session_id:
                await self.client.delete(self.url, headers=self.headers)
        except httpx2.HTTPError:
            pass
        finally:
            if self.owns_client:
                await self.client.aclose()

    async def delete(self) -> None:
        """End the session (DELETE) and check the gateway accepted it."""
        response = await self.client.delete(self.url, headers=self.headers)
        if response.status_code not in (200, 202, 204):
            raise BenchError(f"DELETE of session {self.session_id}: HTTP {response.status_code}")
        self.session_id = None


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
}


def check_echo(result: dict[str, Any], text: str) -> None:
    content = result.get("content") or [{}]
    if content[0].get("text") != text:
        raise BenchError(f"echo answered {content[0].get('text')!r} instead of {text!r}")


class StdioSession(EchoCalls):
    """A raw JSON-RPC client over a process's stdin/stdout (newline-delimited messages), with
    the same interface as `Session`: the echo fixture directly, or the gateway over stdio
    (`gateway=True`: execute_tool on `server`)."""

    def __init__(
        self, command: list[str], env: dict[str, str], log_path: Path, gateway: bool, server: str
    ) -> None:
        self.command, self.env, self.log_path = command, env, log_path
        self.gateway, self.server = gateway, server
        self.process: asyncio.subprocess.Process | None = None
        self.next_id = 0
        self.over = " over stdio"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
        assert self.process is not None and self.process.stdout is not None
        self.next_id += 1
        request_id = self.next_id
        started = time.perf_counter()
        await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:  # skip notifications (logs) the server may send first
            line = await self.process.stdout.readline()
            if not line:
                raise BenchError(f"{self.command[-1]} closed stdout; its log: {self.log_path}")
            message = json.loads(line)
            if message.get("id") == request_id:
                return message, time.perf_counter() - started

    async def open(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                limit=2**24,
            )
        params = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        }
        message, _ = await self.request("initialize", params)
        if "result" not in message:
            raise BenchError(f"initialize over stdio failed: {message}")
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def close(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


async def warm_up(sessions: Iterable[EchoCalls], count: int) -> None:
    for n in range(count):
        for session in sessions:
            await session.echo(f"warm-{n}")


async def alternated(sessions: Mapping[str, EchoCalls], calls: int, seed: int) -> dict[str, list[float]]:
    """`calls` echo calls on every session, in a new random order each round so that the
    machine's noise hits every path alike: the seconds of each call, by session."""
    rng = random.Random(seed)
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for n in range(calls):
        order = list(sessions.items())
        rng.shuffle(order)
        for name, session in order:
            timings[name].append(await session.echo(f"call-{n}"))
    return timings


async def open_sessions(
    url: str, gateway: bool, count: int, make: Callable[[], Session] | None = None
) -> tuple[list[Session], list[Session], list[str], float]:
    """Open `count` sessions at once: (all, the ones that opened, errors, seconds it took)."""
    sessions = [make() if make else Session(url, gateway, timeout=120) for _ in range(count)]
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(s.open() for s in sessions), return_exceptions=True)
    seconds = time.perf_counter() - started
    errors = [f"open: {o!r}"[:300] for o in outcomes if isinstance(o, BaseException)]
    live = [s for s, o in zip(sessions, outcomes, strict=True) if not isinstance(o, BaseException)]
    return sessions, live, errors, seconds


async def run_concurrent(
    url: str,
    gateway: bool,
    sessions: int,
    calls: int,
    stack: Stack,
    port: int,
    rate: float | None = None,
    duration: float = 0.0,
    make: Callable[[], Session] | None = None,
    workers: list[int] | None = None,
) -> dict[str, Any]:
    """`sessions` sessions opened and held at once, then all calling at the same time.

    Without `rate`, every session makes `calls` calls back to back (closed loop, no pause: the
    server is saturated and the figures are its capacity). With `rate`, each session pauses a
    random (exponential) time between calls so that all together make about `rate` calls per
    second for `duration` seconds: latency with 100+ sessions held, below saturation.
    """
    opened, live, errors, open_seconds = await open_sessions(url, gateway, sessions, make)
    timings: list[float] = []
    held = established_connections(port)
    active_metric = await active_sessions_metric(stack) if gateway and make is None else None
    start = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def one(index: int, session: Session) -> None:
        rng = random.Random(index)
        await start.wait()
        end = loop.time() + duration
        n = 0
        while rate is not None or n < calls:
            if rate is not None:
                pause = rng.expovariate(rate / max(1, len(live)))
                if loop.time() + pause >= end:
                    break  # the next call would start after the run's end
                await asyncio.sleep(pause)
            try:
                timings.append(await session.echo(f"s{index}-c{n}"))
            except Exception as exc:  # counted, never fatal to the others
                errors.append(f"call: {exc!r}"[:300])
            n += 1

    tasks = [asyncio.create_task(one(i, s)) for i, s in enumerate(live)]
    await asyncio.sleep(0.05)
    pids = workers or [stack.worker_pid()]
    echo_pid = stack.echo.process.pid

    def sample() -> tuple[float, float, float]:
        return own_cpu_seconds(), sum(cpu_seconds(pid) for pid in pids), cpu_seconds(echo_pid)

    cpu_before = sample()
    wall = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall
    cpu_after = sample()
    await asyncio.gather(*(s.close() for s in opened))
    stats = summarize_ms(timings)
    return {
        "sessions_opened": len(live),
        "sessions_requested": sessions,
        "connections_held": held,
        "active_sessions_metric": active_metric,
        "open_seconds": round(open_seconds, 2),
        "calls": len(timings),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_seconds": round(wall, 2),
        "throughput_per_s": round(len(timings) / wall, 1) if wall else 0.0,
        "p50": stats["p50"],
        "p95": stats["p95"],
        "p99": stats["p99"],
        "max": stats["max"],
        "cpu_seconds": {
            "load_generator": round(cpu_after[0] - cpu_before[0], 2),
            "gateway_worker": round(cpu_after[1] - cpu_before[1], 2),
            "echo_server": round(cpu_after[2] - cpu_before[2], 2),
        },
    }


async def active_sessions_metric(stack: Stack) -> float | None:
    """The gateway's active-sessions gauge, read from /metrics?format=json."""
    async with httpx2.AsyncClient(timeout=10, trust_env=False) as client:
        summary = (await client.get(f"{stack.gateway_base}/metrics?format=json")).json()
    for name, family in summary.items():
        if isinstance(family, dict) and "session" in name and family.get("type") == "gauge":
            samples = family.get("samples") or []
            if samples:
                return sum(sample["value"] for sample in samples)
    return None
