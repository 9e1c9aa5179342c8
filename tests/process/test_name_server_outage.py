"""The gateway's name server stops answering while clients call an HTTP downstream by name.

Process-level: a Granian gateway in a mount namespace of its own, whose /etc/resolv.conf names
only a real (tiny) name server of the test's (tests/servers/dns.py), which the test pauses.
What it guards (a CI run of the scale stack, when podman's name server went silent): a ping
that needed a new connection timed out, the reconnect closed the calls' HTTP client while
calls were still looking up the server's name, and each of those calls ended its caller's
whole MCP session ('Connection closed', then 404 for every request). Needs root (a mount
namespace, port 53), as CI has.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from conftest import PY, ROOT, SERVERS, GatewayFiles, HttpGateway, free_port, start_http_gateway, wait_until

NAME = "downstream.test"
SESSIONS = 10
ACCEPT = {"Accept": "application/json, text/event-stream"}
VERSION = "2025-11-25"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (CI has both)"
)


@pytest.fixture
def name_server() -> Iterator[subprocess.Popen[bytes]]:
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    process = subprocess.Popen([PY, str(SERVERS / "dns.py"), address, NAME, "127.0.0.1"])
    process.address = address  # type: ignore[attr-defined]
    yield process
    process.send_signal(signal.SIGCONT)
    process.kill()
    process.wait(10)


@pytest.fixture
def demo_server() -> Iterator[int]:
    """The compose demo server: it keeps idle connections 75 s, past the gateway's pings."""
    port = free_port()
    env = {**os.environ, "DEMO_HOST": "127.0.0.1", "DEMO_PORT": str(port)}
    process = subprocess.Popen(
        [PY, str(ROOT / "ops/compose/demo_server.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout=30)
    yield port
    process.terminate()
    process.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(params=["shared", "agent"])
def gateway(
    request: pytest.FixtureRequest,
    gateway_files: GatewayFiles,
    name_server: subprocess.Popen[bytes],
    demo_server: int,
    tmp_path: Path,
) -> Iterator[HttpGateway]:
    """A gateway reaching the demo server by name: one session for all agents (`shared`), or
    one per agent (`agent`), each opened on the agent's first call, perhaps during the outage:
    it connects with the name the server's shared session looked up at start."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {name_server.address}\n")  # type: ignore[attr-defined]
    demo = {"url": f"http://{NAME}:{demo_server}/mcp", "isolation": request.param}
    gateway_files.write_servers({"demo": demo})
    agent = {"allow": {"servers": ["demo"]}, "rate_limit": "100000/minute"}
    gateway_files.write_rules({"agents": {"dev": agent, "ops": agent}})
    launcher = ["unshare", "-m", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"]
    # Pings further apart than httpx's default keep-alive (5 s), as in production (10 s): a
    # ping then found its connection closed and needed a name lookup.
    gateway = start_http_gateway(
        gateway_files, launcher=launcher, GATEWAY_PING_INTERVAL="6", GATEWAY_PING_TIMEOUT="1"
    )
    yield gateway
    gateway.stop()


async def test_a_silent_name_server_fails_no_call_and_ends_no_session(
    gateway: HttpGateway, name_server: subprocess.Popen[bytes]
) -> None:
    async def meanwhile(calls: Calls) -> None:
        # Idle past a ping (due 6 to 12 s after the last answer), then call while silent.
        await asyncio.sleep(14)
        await calls(5, "silent")

    outcomes = await _silenced(gateway, name_server, meanwhile, before=2, after=2)
    _assert_all_answered(outcomes, ("before", "silent", "after"))


async def test_a_name_server_silent_before_the_first_call_fails_no_call(
    gateway: HttpGateway, name_server: subprocess.Popen[bytes]
) -> None:
    """The calls' own connections have never looked the name up: the session's lookup serves."""

    async def meanwhile(calls: Calls) -> None:
        await calls(5, "silent")

    outcomes = await _silenced(gateway, name_server, meanwhile, before=0, after=0)
    _assert_all_answered(outcomes, ("silent",))


async def test_an_agent_first_calling_during_an_outage_is_answered(
    gateway: HttpGateway, name_server: subprocess.Popen[bytes]
) -> None:
    """Agent `ops` calls only while the name server is silent: under `agent` isolation its own
    downstream session starts then (a clean-root CI rehearsal failed 3 scale tests on this)."""

    async def meanwhile(calls: Calls) -> None:
        await calls(5, "silent", agent="ops")

    outcomes = await _silenced(gateway, name_server, meanwhile, before=1, after=0)
    _assert_all_answered(outcomes, ("before", "silent"))


class Calls(Protocol):
    async def __call__(self, seconds: float, phase: str, agent: str = "dev") -> None: ...


async def _silenced(
    gateway: HttpGateway,
    name_server: subprocess.Popen[bytes],
    meanwhile: Callable[[Calls], Awaitable[None]],
    before: float,
    after: float,
) -> Counter[str]:
    """Open the sessions, call for `before` seconds, pause the name server for `meanwhile`,
    resume it and call for `after` seconds; the outcomes counted by phase."""
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        sessions = {agent: [await _open(http, agent) for _ in range(SESSIONS)] for agent in ("dev", "ops")}

        async def calls(seconds: float, phase: str, agent: str = "dev") -> None:
            await _calls(http, sessions[agent], seconds, phase, outcomes)

        if before:
            await calls(before, "before")
        name_server.send_signal(signal.SIGSTOP)
        try:
            await meanwhile(calls)
        finally:
            name_server.send_signal(signal.SIGCONT)
        if after:
            await calls(after, "after")
    return outcomes


async def _calls(
    http: httpx.AsyncClient,
    sessions: list[dict[str, str]],
    seconds: float,
    phase: str,
    outcomes: Counter[str],
) -> None:
    """Every session calls in a loop for `seconds`; each outcome is counted under the phase."""

    async def loop(headers: dict[str, str]) -> None:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            n += 1
            outcomes[f"{phase}: {await _echo(http, headers, n)}"] += 1
            await asyncio.sleep(0.1)

    await asyncio.gather(*(loop(headers) for headers in sessions))


def _assert_all_answered(outcomes: Counter[str], phases: tuple[str, ...]) -> None:
    failed = {outcome: count for outcome, count in outcomes.items() if not outcome.endswith(": ok")}
    assert failed == {}, (failed, outcomes)
    assert all(outcomes[f"{phase}: ok"] > SESSIONS for phase in phases), outcomes


async def _open(http: httpx.AsyncClient, agent: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": VERSION,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    opened = await http.post("/mcp", json=init, headers={**ACCEPT, "X-Agent-ID": agent})
    assert opened.status_code == 200, opened.text
    headers = {**ACCEPT, "X-Agent-ID": agent, "mcp-session-id": opened.headers["mcp-session-id"]}
    headers["mcp-protocol-version"] = VERSION
    done = await http.post(
        "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    assert done.status_code == 202, done.text
    return headers


async def _echo(http: httpx.AsyncClient, headers: dict[str, str], n: int) -> str:
    """'ok', or what went wrong: the HTTP status, or the JSON-RPC error's message."""
    arguments = {"server": "demo", "tool": "echo", "args": {"message": f"m{n}"}}
    call = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": "execute_tool", "arguments": arguments},
    }
    response = await http.post("/mcp", json=call, headers=headers)
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    line = next(line for line in response.text.splitlines() if line.startswith("data:") and '"id"' in line)
    message = json.loads(line[5:])
    if "error" in message:
        return str(message["error"]["message"])
    text = message["result"]["content"][0]["text"]
    return "ok" if text == f"m{n}" else f"wrong answer {text!r}"
