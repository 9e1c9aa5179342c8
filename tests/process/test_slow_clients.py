"""Slow and many clients against a real Granian process on loopback: floods of 1,100 connections
(above Granian's default limit of 1,024 per worker) must not stop the service.

One gateway takes, in turn: 1,100 SSE GET streams (one per session, held to the end), 1,100
connections trickling their headers, 1,100 trickling their bodies, and then SIGTERM with the
streams still open. /health is timed throughout. Timeouts are shortened through the settings so
the test ends in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from agent_mcp_gateway.run.granian import connection_limit

from conftest import (
    STANDARD_RULES,
    GatewayFiles,
    HttpGateway,
    fixture_server,
    initialize_message,
    start_http_gateway,
)

FLOOD = 1_100
TIMEOUT = 5  # GATEWAY_HEADER_TIMEOUT and GATEWAY_BODY_TIMEOUT for this test, seconds
# /health limits, in seconds, loose for a shared CI machine; before the fix it did not answer.
HEALTH_MEDIAN, HEALTH_MAX = 0.5, 5.0
INITIALIZE = json.dumps(initialize_message("flood")).encode()

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def open_files() -> None:
    """Room for the flood's sockets in this process (the gateway raises its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * FLOOD + 1_024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file hard limit ({hard}) is below {wanted}")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_open_file_limit_is_raised_to_fit_the_connection_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 13_024:
        pytest.skip(f"the open-file hard limit ({hard}) is below 13,024")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1_024, hard))
        assert connection_limit(12_000) == 12_000
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 12_000
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_floods_do_not_stop_the_service(gateway_files: GatewayFiles, open_files: None) -> None:
    gateway_files.write_servers({"echo": fixture_server("echo")})
    gateway_files.write_rules(STANDARD_RULES)
    gateway = start_http_gateway(
        gateway_files, GATEWAY_HEADER_TIMEOUT=str(TIMEOUT), GATEWAY_BODY_TIMEOUT=str(TIMEOUT)
    )
    port = int(gateway.base_url.rsplit(":", 1)[1])
    try:
        async with asyncio.timeout(240):
            await flood_scenario(gateway, port)
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


async def flood_scenario(gateway: HttpGateway, port: int) -> None:
    streams = await many(lambda: sse_stream(port))
    latency = await health_while(gateway, asyncio.sleep(1))
    report("SSE GET streams", latency)

    # Headers that never end: each connection is closed once the header timeout passes.
    slow_headers = await many(lambda: connect(port, b"GET /health HTTP/1.1\r\nHost: x\r\n"))
    outcomes: list[bytes] = []
    latency = await health_while(
        gateway, gather_into(outcomes, (trickle(c, b"X", TIMEOUT + 5) for c in slow_headers))
    )
    report("slow headers", latency)
    assert outcomes == [b""] * FLOOD, set(outcomes)  # closed without an answer

    # Bodies that never end: each gets 408 once the body deadline passes.
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{"
    )
    slow_bodies = await many(lambda: connect(port, head))
    outcomes = []
    latency = await health_while(
        gateway, gather_into(outcomes, (trickle(c, b" ", TIMEOUT + 5) for c in slow_bodies))
    )
    report("slow bodies", latency)
    assert {outcome[:12] for outcome in outcomes} == {b"HTTP/1.1 408"}

    # SIGTERM with every stream still open: each ends at once and the gateway exits 0.
    signalled = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    ended = await asyncio.gather(*(until_closed(stream) for stream in streams))
    code = await asyncio.to_thread(gateway.process.wait, 30)
    exited = time.monotonic() - signalled
    print(f"SIGTERM, {FLOOD} streams open: all ended in {max(ended):.2f} s, exit {code} in {exited:.2f} s")
    assert code == 0
    assert max(ended) < 5 and exited < 15


async def many(open_one: Callable[[], Awaitable[Connection]]) -> list[Connection]:
    """FLOOD connections, opened at most 25 at a time: a request queued behind more than that
    on a loaded 2-core machine could outwait the body deadline before its body was read (408
    to an `initialize` sent whole, in a clean-root rehearsal)."""
    gate = asyncio.Semaphore(25)

    async def gated() -> Connection:
        async with gate:
            return await open_one()

    return await asyncio.gather(*(gated() for _ in range(FLOOD)))


async def connect(port: int, first: bytes) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def sse_stream(port: int) -> Connection:
    """A new session's GET stream, open and answered 200."""
    reader, writer = await connect(
        port,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(INITIALIZE), INITIALIZE),
    )
    head = await reader.readuntil(b"\r\n\r\n")
    sessions = [line for line in head.split(b"\r\n") if line.lower().startswith(b"mcp-session-id:")]
    assert sessions, head
    session = sessions[0]
    await reader.readuntil(b"\r\n0\r\n\r\n")  # the end of the chunked SSE answer
    writer.write(
        b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        b"mcp-protocol-version: 2025-06-18\r\n" + session + b"\r\n\r\n"
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    return reader, writer


async def trickle(connection: Connection, byte: bytes, limit: float) -> bytes:
    """Send one byte every half second until the server answers or closes; what it sent."""
    reader, writer = connection
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            writer.write(byte)
            return await asyncio.wait_for(reader.read(4096), 0.5)
        except TimeoutError:
            continue
        except ConnectionError:
            return b""
    return b"(still open)"


async def until_closed(connection: Connection) -> float:
    started = time.monotonic()
    reader, _ = connection
    while await reader.read(1 << 16):
        pass
    return time.monotonic() - started


async def gather_into(results: list[Any], work: Any) -> None:
    results.extend(await asyncio.gather(*work))


async def health_while(gateway: HttpGateway, work: Awaitable[Any]) -> list[float]:
    """/health answer times (seconds), asked every 0.1 s on fresh connections while `work` runs."""
    task = asyncio.ensure_future(work)
    times: list[float] = []
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not task.done() or not times:
            started = time.monotonic()
            response = await client.get(f"{gateway.base_url}/health")
            assert response.status_code == 200
            times.append(time.monotonic() - started)
            await asyncio.sleep(0.1)
    await task
    return times


def report(flood: str, latency: list[float]) -> None:
    median, worst = statistics.median(latency), max(latency)
    print(f"/health, {FLOOD} {flood}: {len(latency)} answers, median {median:.3f} s, max {worst:.3f} s")
    assert median < HEALTH_MEDIAN and worst < HEALTH_MAX, latency
