"""The compose `scale` profile as a fleet: three gateway replicas behind HAProxy, Redis shared.

One scale stack (ops/stack.sh up --scale, its own project name and loopback ports) serves every
test here and is removed at the end, also when a test fails. Clients speak to HAProxy only:
session-era clients as raw protocol (cheap enough for hundreds at once), sessionless 2026-07-28
clients as fastmcp clients. HAProxy names the replica slot that answered (X-Gateway-Replica) and
its stats page maps each slot to a container's address, so a test knows which sessions a
replica held.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker.models.containers import Container
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from agent_mcp_gateway.access.credentials import token_hash

from .conftest import _write_readable, diagnose, report
from .test_compose_stack import free_port, stack_sh

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3
SLOTS = {f"gw{n}" for n in range(1, REPLICAS + 1)}
SHARED_LIMIT = 9  # per minute, for the agents that test the fleet-wide limit
ACCEPT = {"Accept": "application/json, text/event-stream"}
SESSION_VERSION = "2025-11-25"

# Traffic agents get a limit no test reaches; each limit test gets an agent of its own. The
# watcher sees the demo server whole in the aggregate view, under both eras (`demo-classic` is
# the same server spoken to on the handshake era, where its `ask` can ask).
AGENTS = ("fleet", "limited", "limited-after-redis")
WATCHER = "watcher"
TOKENS = {agent: secrets.token_urlsafe(32) for agent in (*AGENTS, WATCHER)}
RULES: dict[str, Any] = {
    "agents": {
        agent: {
            "allow": {"servers": ["demo"], "tools": {"demo": ["echo", "add"]}},
            "tokens": [token_hash(TOKENS[agent])],
            "rate_limit": "100000/minute" if agent == "fleet" else f"{SHARED_LIMIT}/minute",
        }
        for agent in AGENTS
    }
    | {
        WATCHER: {
            "view": "aggregate",
            "allow": {"servers": ["demo", "demo-classic"]},
            "tokens": [token_hash(TOKENS[WATCHER])],
        },
        "default": {"deny": {"servers": ["*"]}},
    },
    "defaults": {"deny_on_missing_agent": True},
}
MODERN = "2026-07-28"
EVENT_SECONDS = 60


def servers_config() -> str:
    """The compose stack's servers, and the demo server once more pinned to the handshake era."""
    servers = json.loads((ROOT / "ops/compose/config/.mcp.json").read_text())
    demo = servers["mcpServers"]["demo"]
    servers["mcpServers"]["demo-classic"] = {
        **demo,
        "description": "The demo server on the handshake era",
        "protocol": "2025-11-25",
    }
    return json.dumps(servers, indent=2)


def auth(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[agent]}"}


@dataclass
class Fleet:
    engine: docker.DockerClient
    project: str
    url: str  # HAProxy, http://127.0.0.1:PORT

    def containers(self, service: str) -> list[Container]:
        found = self.engine.containers.list(
            all=True,
            filters={
                "label": [
                    f"io.podman.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        return sorted(found, key=lambda c: int(c.labels["com.docker.compose.container-number"]))

    @property
    def replicas(self) -> list[Container]:
        return self.containers("gateway-replica")

    def haproxy_servers(self) -> dict[str, tuple[str, str]]:
        """HAProxy's view of its replica slots: slot -> (status, address)."""
        haproxy = self.containers("haproxy")[0]
        fetch = (
            'exec 3<>/dev/tcp/127.0.0.1/8404 && printf "GET /stats;csv;norefresh HTTP/1.0\\r\\n\\r\\n" >&3 '
            "&& cat <&3"
        )
        text = exec_output(haproxy, ["bash", "-c", fetch], lambda code, out: code == 0 and "# pxname" in out)
        header = text.index("# pxname")
        rows = csv.DictReader(io.StringIO(text[header + 2 :]))
        return {
            row["svname"]: (row["status"], row["addr"].rsplit(":", 1)[0])
            for row in rows
            if row.get("pxname") == "gateways" and row["svname"] in SLOTS
        }

    def slot_of(self, container: Container) -> str:
        container.reload()
        address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        slots = [slot for slot, (_, addr) in self.haproxy_servers().items() if addr == address]
        assert len(slots) == 1, (address, self.haproxy_servers())
        return slots[0]

    def wait_all_up(self, timeout: float = 120) -> float:
        """Until HAProxy sees every replica UP (its /ready passes) and every replica has its
        downstream servers up and its rate limits shared; seconds it took."""
        start = time.monotonic()
        servers: dict[str, tuple[str, str]] = {}
        settled: list[str] = []
        while time.monotonic() - start < timeout:
            servers = self.haproxy_servers()
            if len(servers) == REPLICAS and all(status == "UP" for status, _ in servers.values()):
                settled = [unsettled(replica) for replica in self.replicas]
                if not any(settled):
                    return time.monotonic() - start
            time.sleep(0.5)
        pytest.fail(f"replicas not all UP and settled within {timeout:.0f} s: {servers} {settled}")


def replica_get(container: Container, path: str) -> tuple[int, str]:
    """GET a replica's own endpoint from inside its container (replicas publish no port);
    status 0 when nothing answers (the replica is starting or stopping)."""
    script = (
        "import sys, urllib.request as u, urllib.error as e\n"
        "try:\n r = u.urlopen('http://127.0.0.1:8000' + sys.argv[1], timeout=5)\n"
        " print(r.status); print(r.read().decode())\n"
        "except e.HTTPError as x:\n print(x.code); print(x.read().decode())\n"
        "except OSError as x:\n print(0); print(x)\n"
    )
    text = exec_output(
        container,
        ["python3", "-c", script, path],
        lambda code, out: code == 0 and out.split("\n")[0].isdigit(),
    )
    status, _, body = text.partition("\n")
    return int(status), body


def exec_output(container: Container, command: list[str], answered: Callable[[int, str], bool]) -> str:
    """A command's output in a container, tried a few times: under load an exec now and then
    hands back no output at all."""
    for _ in range(5):
        code, out = container.exec_run(command)
        text = out.decode(errors="replace")
        if answered(code, text):
            return text
        time.sleep(0.5)
    pytest.fail(f"{container.name}: {command[0]} by exec: exit {code}, {text[-500:]!r}")


def active_sessions(container: Container) -> int:
    _, text = replica_get(container, "/metrics")
    line = next(line for line in text.splitlines() if line.startswith("gateway_active_sessions "))
    return int(float(line.split()[1]))


def unsettled(container: Container) -> str:
    """What a replica still waits for (a downstream not up, limits not shared); "" when nothing."""
    status, body = replica_get(container, "/ready")
    if status != 200:
        return f"{container.name}: /ready {status or 'not answering'}"
    ready = json.loads(body)
    waiting = [
        f"{name} {server['state']}" for name, server in ready["servers"].items() if server["state"] != "up"
    ]
    if ready.get("rate_limits", {}).get("state") != "shared":
        waiting.append(f"rate limits {ready.get('rate_limits')}")
    return f"{container.name}: {', '.join(waiting)}" if waiting else ""


def rate_limit_state(container: Container) -> str | None:
    """`shared`, `fallback` or `local` from the replica's /ready (None: not reported)."""
    status, body = replica_get(container, "/ready")
    if status == 0:
        return None
    state = json.loads(body).get("rate_limits", {}).get("state")
    return str(state) if state is not None else None


@pytest.fixture(scope="module")
def fleet(
    engine: docker.DockerClient,
    gateway_image: str,
    prometheus_image: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Fleet]:
    failed_before = request.session.testsfailed
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed (ops/podman-setup.sh installs it)")
    images = {}
    for service in ("haproxy", "redis"):
        variable = f"{service.upper()}_TEST_IMAGE"
        if os.environ.get(variable):
            images[service] = os.environ[variable]
            continue
        built = subprocess.run(
            [str(ROOT / "ops/build-service-image.sh"), service], capture_output=True, text=True, timeout=900
        )
        assert built.returncode == 0, built.stderr[-4000:]
        images[service] = built.stdout.strip().splitlines()[-1]
    config = _write_readable(
        tmp_path_factory.mktemp("fleet-config"),
        {
            ".mcp.json": servers_config(),
            ".mcp-gateway-rules.json": json.dumps(RULES, indent=2),
        },
    )
    project = f"amg-test-scale-{uuid.uuid4().hex[:8]}"
    haproxy_port = free_port()
    env = {
        **os.environ,
        "STACK_PROJECT": project,
        "STACK_TIMEOUT": "240",
        "GATEWAY_IMAGE": gateway_image,
        "PROMETHEUS_IMAGE": prometheus_image,
        "HAPROXY_IMAGE": images["haproxy"],
        "REDIS_IMAGE": images["redis"],
        "GATEWAY_CONFIG_DIR": str(config),
        "GATEWAY_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "HAPROXY_PORT": str(haproxy_port),
    }
    try:
        started = time.monotonic()
        up = subprocess.run(
            [str(ROOT / "ops/stack.sh"), "up", "--scale"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert up.returncode == 0, up.stderr[-6000:]
        fleet = Fleet(engine, project, f"http://127.0.0.1:{haproxy_port}")
        assert len(fleet.replicas) == REPLICAS
        fleet.wait_all_up()
        report(f"scale stack up (ops/stack.sh up --scale, images built): {time.monotonic() - started:.1f} s")
        yield fleet
    finally:
        if request.session.testsfailed > failed_before:
            keep_logs(engine, project)
        down = stack_sh("down", env, timeout=600)
        assert down.returncode == 0, down.stderr


def keep_logs(engine: docker.DockerClient, project: str) -> None:
    """The fleet's own account of a failed test: each container's warnings, errors and last lines."""
    label = {"label": f"io.podman.compose.project={project}"}
    for container in engine.containers.list(all=True, filters=label):
        try:
            lines = container.logs().decode(errors="replace").splitlines()
        except Exception as exc:  # a container may be gone already
            lines = [f"(no logs: {exc})"]
        notable = [line for line in lines[:-10] if '"INFO"' not in line and "INFO: " not in line]
        diagnose(f"{container.name} ({container.status}), all but INFO lines:", "\n".join(notable[-60:]))
        diagnose(f"{container.name}, last 10 lines:", "\n".join(lines[-10:]))


# ------------------------------------------------------------------------------ clients


def rpc_message(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON or SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return dict(json.loads(line[5:]))
        raise AssertionError(f"no response in SSE stream: {response.text!r}")
    return dict(response.json())


def echo_call(message: str, request_id: int) -> dict[str, Any]:
    arguments = {"server": "demo", "tool": "echo", "args": {"message": message}}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "execute_tool", "arguments": arguments},
    }


@dataclass
class Session:
    """A session-era client over raw HTTP: initialize once, call, start over after a 404."""

    http: httpx.AsyncClient
    agent: str
    session_id: str = ""
    replica: str = ""  # the HAProxy slot that holds the session
    first_replica: str = ""
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    reinitialized: int = 0

    async def open(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": SESSION_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "scale-test", "version": "1"},
            },
        }
        response = await self.http.post("/mcp", json=init, headers={**ACCEPT, **auth(self.agent)})
        assert response.status_code == 200, (response.headers, response.text)
        self.session_id = response.headers["mcp-session-id"]
        self.replica = response.headers["x-gateway-replica"]
        self.first_replica = self.first_replica or self.replica
        done = await self.http.post(
            "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers()
        )
        assert done.status_code == 202, (self.replica, self.session_id, done.headers, done.text)

    def headers(self) -> dict[str, str]:
        return {
            **ACCEPT,
            **auth(self.agent),
            "mcp-session-id": self.session_id,
            "mcp-protocol-version": SESSION_VERSION,
        }

    async def call(self, tool: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """One tools/call: the replica slot that answered, and the JSON-RPC message."""
        self.calls += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.calls,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        response = await self.http.post("/mcp", json=body, headers=self.headers())
        assert response.status_code == 200, (response.headers, response.text)
        return response.headers["x-gateway-replica"], rpc_message(response)

    async def echo(self, message: str) -> tuple[httpx.Response, dict[str, Any] | None]:
        """One call; the response and its JSON-RPC message (None when the HTTP status is not 200)."""
        self.calls += 1
        response = await self.http.post("/mcp", json=echo_call(message, self.calls), headers=self.headers())
        return response, rpc_message(response) if response.status_code == 200 else None

    async def echo_or_recover(self, message: str) -> None:
        """What a client does: on 404 (session gone with its replica) start a new session."""
        try:
            response, body = await self.echo(message)
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code == 404:
            self.errors.append(f"404 from {response.headers.get('x-gateway-replica')}")
            self.reinitialized += 1
            try:
                await self.open()
                response, body = await self.echo(message)
            except (AssertionError, httpx.HTTPError) as exc:
                self.errors.append(f"re-initialize failed: {exc}")
                return
        if response.status_code != 200:
            self.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
        elif body is None or body.get("result", {}).get("content", [{}])[0].get("text") != message:
            self.errors.append(f"wrong answer: {body}")
        elif response.headers["x-gateway-replica"] != self.replica:
            self.errors.append(f"answered by {response.headers['x-gateway-replica']}, not {self.replica}")


def modern_request(method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A 2026-07-28 request of the watcher's (no session: HAProxy sends it round robin), as
    keyword arguments for httpx: its body, with the era's `_meta`, and the era's headers."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "scale-test", "version": "1"},
    }
    headers = {**ACCEPT, **auth(WATCHER), "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    return {"json": body, "headers": headers}


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response as they arrive (priming events carry none)."""
    async for line in response.aiter_lines():
        if line.startswith("data:") and line[5:].strip():
            yield dict(json.loads(line[5:]))


async def session_on(http: httpx.AsyncClient, wanted: Callable[[str], bool]) -> Session:
    """A watcher session on a replica slot `wanted` accepts (round robin reaches each in turn)."""
    for _ in range(3 * REPLICAS):
        session = Session(http, WATCHER)
        await session.open()
        if wanted(session.replica):
            return session
        await http.delete("/mcp", headers=session.headers())
    pytest.fail(f"no session landed on a wanted replica in {3 * REPLICAS} tries")


@asynccontextmanager
async def haproxy_http(fleet: Fleet, connections: int = 50) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=fleet.url, timeout=60, limits=limits) as http:
        yield http


@dataclass
class SessionlessLoad:
    """2026-07-28 clients (fastmcp, no session) calling in a loop; every failure is kept."""

    fleet: Fleet
    clients: int = 3
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self, n: int) -> None:
        transport = StreamableHttpTransport(f"{self.fleet.url}/mcp", headers=auth("fleet"))
        async with Client(transport, mode="auto", timeout=60, init_timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                message = f"sessionless-{n}-{i}"
                try:
                    result = await client.call_tool_mcp(
                        "execute_tool", {"server": "demo", "tool": "echo", "args": {"message": message}}
                    )
                except Exception as exc:  # any failure of the call is what this test counts
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.2)  # as a client would, before it tries again
                    continue
                self.calls += 1
                if result.is_error or result.content[0].text != message:  # type: ignore[union-attr]
                    self.failures.append(f"wrong answer: {result}")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SessionlessLoad]:
        tasks = [asyncio.create_task(self._run(n)) for n in range(self.clients)]
        try:
            await asyncio.sleep(1)
            yield self
        finally:
            self._stop.set()
            async with asyncio.timeout(90):
                await asyncio.gather(*tasks)


# ------------------------------------------------------------------------------ tests


async def test_200_sessions_spread_over_the_replicas(fleet: Fleet) -> None:
    """Each session is opened by round robin and then stays on its replica; every answer is right."""
    before = [active_sessions(c) for c in fleet.replicas]
    async with haproxy_http(fleet) as http:
        sessions = [Session(http, "fleet") for _ in range(200)]
        gate = asyncio.Semaphore(25)

        async def use(n: int, session: Session) -> None:
            async with gate:
                await session.open()
                for k in range(2):
                    await session.echo_or_recover(f"session-{n}-{k}")

        started = time.monotonic()
        await asyncio.gather(*(use(n, s) for n, s in enumerate(sessions)))
        elapsed = time.monotonic() - started
        errors = [e for s in sessions for e in s.errors]
        assert errors == [], errors[:10]
        by_slot = Counter(s.replica for s in sessions)
        held = [active_sessions(c) - b for c, b in zip(fleet.replicas, before, strict=True)]
        report(
            f"200 sessions through HAProxy in {elapsed:.1f} s: "
            f"by replica slot {dict(sorted(by_slot.items()))}, "
            f"gateway_active_sessions per replica container {held} (400 calls, all correct)"
        )
        assert set(by_slot) == SLOTS
        assert sum(held) == 200
        assert min(held) >= 200 // REPLICAS - 10, held  # round robin: an even spread
        assert sorted(held) == sorted(by_slot.values())
        for session in sessions:
            await http.delete("/mcp", headers=session.headers())


async def test_an_agents_limit_holds_across_replicas(fleet: Fleet) -> None:
    await assert_limit_shared(fleet, "limited")


async def assert_limit_shared(fleet: Fleet, agent: str) -> None:
    """Opening a session on each replica (each charged) and the rest of SHARED_LIMIT in calls
    spread over them pass; the next call is refused on each."""
    async with haproxy_http(fleet) as http:
        sessions = [Session(http, agent) for _ in range(REPLICAS)]
        for session in sessions:
            await session.open()
        assert {s.replica for s in sessions} == SLOTS  # one session per replica
        for n in range(SHARED_LIMIT - REPLICAS):
            response, body = await sessions[n % REPLICAS].echo(f"within-{n}")
            assert body is not None and "result" in body, (n, response.text)
        for session in sessions:
            response, body = await session.echo("past the limit")
            assert body is not None and "error" in body, (session.replica, response.text)
            assert body["error"]["code"] == -32005, body
            assert body["error"]["data"]["code"] == "RATE_LIMITED"
            assert response.headers["x-gateway-replica"] == session.replica
        report(f"agent {agent}: {SHARED_LIMIT}/minute over 3 replicas, the next call refused on each")


async def test_a_replica_killed_mid_traffic_loses_only_its_sessions(fleet: Fleet) -> None:
    victim = fleet.replicas[1]
    try:
        await kill_mid_traffic(fleet, victim)
    finally:  # back to three replicas for the next tests
        victim.reload()
        if victim.status != "running":
            victim.start()
        fleet.wait_all_up()


async def kill_mid_traffic(fleet: Fleet, victim: Container) -> None:
    victim_slot = fleet.slot_of(victim)
    async with haproxy_http(fleet) as http, SessionlessLoad(fleet).running() as sessionless:
        sessions = [Session(http, "fleet") for _ in range(30)]
        for session in sessions:
            await session.open()
        ids = {id(s): s.session_id for s in sessions}
        stop = asyncio.Event()

        async def traffic(n: int, session: Session) -> None:
            k = 0
            while not stop.is_set():
                k += 1
                await session.echo_or_recover(f"kill-{n}-{k}")

        loops = [asyncio.create_task(traffic(n, s)) for n, s in enumerate(sessions)]
        await asyncio.sleep(2)
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(6)
        stop.set()
        await asyncio.gather(*loops)
        # One more round after the traffic: every client ends on a working session.
        last_errors = {id(s): len(s.errors) for s in sessions}
        for n, session in enumerate(sessions):
            await session.echo_or_recover(f"after-{n}")

    lost = [s for s in sessions if s.first_replica == victim_slot]
    kept = [s for s in sessions if s.first_replica != victim_slot]
    cut = sum(1 for s in lost for e in s.errors if not e.startswith("404"))
    report(
        f"replica {victim_slot} killed: {len(lost)} of its sessions re-initialized "
        f"({sum(s.reinitialized for s in lost)} times; {cut} answers cut mid-stream), {len(kept)} other "
        f"sessions untouched over {sum(s.calls for s in kept)} calls; 2026-07-28 clients: "
        f"{sessionless.calls} calls, {len(sessionless.failures)} failed"
    )
    assert lost and kept
    assert sessionless.failures == [], sessionless.failures[:5]
    for session in kept:
        assert session.errors == [] and session.session_id == ids[id(session)], session
    for session in lost:
        # 404 for the lost session, or the one answer that was streaming when the replica died.
        assert session.reinitialized >= 1 and session.replica != victim_slot, session
        assert all(e.startswith("404") or "RemoteProtocolError" in e for e in session.errors), session
        assert len(session.errors) == last_errors[id(session)], session  # the last round was clean


async def test_redis_stopped_and_started_calls_continue(fleet: Fleet) -> None:
    redis = fleet.containers("redis")[0]
    async with SessionlessLoad(fleet).running() as load:
        await asyncio.to_thread(redis.stop, timeout=5)
        try:
            fell_back = await wait_state(fleet, "fallback")
            calls_during = load.calls
            await asyncio.sleep(2)
            calls_during = load.calls - calls_during
        finally:
            await asyncio.to_thread(redis.start)
        shared_again = await wait_state(fleet, "shared")
    report(
        f"Redis stopped: every replica in fallback after {fell_back:.1f} s, {calls_during} calls in 2 s "
        f"meanwhile; shared again {shared_again:.1f} s after Redis started; "
        f"{load.calls} calls, {len(load.failures)} failed"
    )
    assert load.failures == [], load.failures[:5]
    assert calls_during > 0
    await assert_limit_shared(fleet, "limited-after-redis")


async def wait_state(fleet: Fleet, state: str, timeout: float = 60) -> float:
    """Until every replica's /ready reports rate limits in `state`; seconds it took."""
    start = time.monotonic()
    states: list[str | None] = []
    while time.monotonic() - start < timeout:
        states = [await asyncio.to_thread(rate_limit_state, c) for c in fleet.replicas]
        if all(s == state for s in states):
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    pytest.fail(f"rate limits not {state} on every replica within {timeout:.0f} s: {states}")


async def test_rolling_restart_with_sessionless_clients_fails_no_call(fleet: Fleet) -> None:
    """Each replica in turn is stopped (SIGTERM: it drains) and started; HAProxy moves calls away."""
    fleet.wait_all_up()
    async with SessionlessLoad(fleet, clients=4).running() as load:
        started = time.monotonic()
        for replica in fleet.replicas:
            await asyncio.to_thread(replica.stop, timeout=35)
            await asyncio.to_thread(replica.start)
            await asyncio.to_thread(fleet.wait_all_up)
        elapsed = time.monotonic() - started
    report(
        f"rolling restart of {REPLICAS} replicas in {elapsed:.1f} s: {load.calls} sessionless calls, "
        f"{len(load.failures)} failed"
    )
    assert load.failures == [], load.failures[:5]
    assert load.calls > 0


async def test_a_listener_on_one_replica_hears_a_change_made_through_another(fleet: Fleet) -> None:
    """A 2026-07-28 `subscriptions/listen` stream is held by one replica; a tool added to the demo
    server through a session on another replica is announced on that other replica's call only
    (the server speaks 2026-07-28 to every replica), and reaches the listener over Redis."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    async with haproxy_http(fleet) as http:
        listen = modern_request("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        async with http.stream("POST", "/mcp", **listen) as stream:
            assert stream.status_code == 200, await stream.aread()
            listening = stream.headers["x-gateway-replica"]
            messages = sse_messages(stream)
            acknowledged = await asyncio.wait_for(anext(messages), EVENT_SECONDS)
            assert acknowledged["method"] == "notifications/subscriptions/acknowledged", acknowledged
            changer = await session_on(http, lambda slot: slot != listening)
            started = time.monotonic()
            slot, answer = await changer.call("demo__register_tool", {"name": name})
            assert slot != listening and answer["result"]["content"][0]["text"] == f"registered {name}", (
                answer
            )
            heard = await asyncio.wait_for(anext(messages), EVENT_SECONDS)
            crossed = time.monotonic() - started
        assert heard["method"] == "notifications/tools/list_changed", heard
        # The listener's replica has read the demo server's new list.
        reader = await session_on(http, lambda slot: slot == listening)
        listed = rpc_message(
            await http.post(
                "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=reader.headers()
            )
        )
        assert f"demo__{name}" in {tool["name"] for tool in listed["result"]["tools"]}
        for session in (changer, reader):
            await http.delete("/mcp", headers=session.headers())
    report(
        f"tool added through replica {slot}, heard on the listen stream held by {listening} "
        f"{crossed:.2f} s after the call was sent"
    )


async def test_an_mrtr_retry_on_another_replica_is_told_where_the_call_is_held(fleet: Fleet) -> None:
    """A 2026-07-28 call to a handshake-era server that asks mid-call is held by the replica that
    took it; a retry that HAProxy sends to another replica gets CALL_NOT_HELD naming the holder
    (the replicas share GATEWAY_REQUEST_STATE_KEYS, so it opens the state), and the retry that
    reaches the holder gets the answer."""
    tool = "demo-classic__ask"
    call = {"name": tool, "arguments": {"question": "Which colour?"}}
    hostnames = {fleet.slot_of(replica): replica.attrs["Config"]["Hostname"] for replica in fleet.replicas}
    async with haproxy_http(fleet) as http:
        first = await http.post("/mcp", **modern_request("tools/call", call, tool))
        holder = first.headers["x-gateway-replica"]
        asked = rpc_message(first).get("result") or {}
        assert asked.get("resultType") == "input_required", rpc_message(first)
        (key,) = asked["inputRequests"]
        retry = {
            **call,
            "inputResponses": {key: {"action": "accept", "content": {"value": "blue"}}},
            "requestState": asked["requestState"],
        }
        outcomes: list[tuple[str, dict[str, Any]]] = []
        while not outcomes or outcomes[-1][0] != holder:
            assert len(outcomes) < 3 * REPLICAS, outcomes
            answered = await http.post("/mcp", **modern_request("tools/call", retry, tool))
            outcomes.append((answered.headers["x-gateway-replica"], rpc_message(answered)))
    refused = [message for slot, message in outcomes if slot != holder]
    assert refused, f"every retry reached the holder {holder}: {outcomes}"  # round robin moves on
    for message in refused:
        error = message.get("error") or {}
        assert error.get("data", {}).get("code") == "CALL_NOT_HELD", message
        assert error["data"]["holder"] == hostnames[holder], (error, hostnames)
    result = outcomes[-1][1].get("result") or {}
    assert result.get("content", [{}])[0].get("text") == "you said blue", outcomes[-1]
    report(
        f"MRTR call held by {holder}: {len(refused)} retry(s) on other replicas got CALL_NOT_HELD "
        f"naming it, the retry that reached it got the answer"
    )
