"""Calls per second through HAProxy with 1 and with 3 gateway replicas, and the CPU per call.

Runs against a scale stack that is already up (`ops/stack.sh up --scale`, which writes the API
tokens to ops/compose/client.env). Every phase goes through the same HAProxy; for the 1-replica
phases two replicas are stopped (drained; HAProxy takes them out) and started again afterwards.
The phases alternate (3, 1, 3, 1, ... `--rounds` times) so that a change in the machine's other
load hits both configurations.

The load is closed-loop raw JSON-RPC over httpx (cheaper for the load generator than an SDK
client): `--clients` clients each call `tools/call execute_tool {server: demo, tool: echo}` in a
loop and check every answer, in one or both protocol eras:

- `sessionless`: 2026-07-28 requests (no `initialize`, no session; the version, client info and
  capabilities ride in each request's `_meta`), which HAProxy spreads round robin;
- `session`: 2025-11-25 clients, each `initialize` + `notifications/initialized` once, then its
  calls carry its `Mcp-Session-Id` and HAProxy sends them to the replica that holds the session.

CPU is read before and after each phase for every process of each container (utime + stime in
/proc of the processes in the container's PID namespace: that works whether or not the engine
gives containers a cgroup of their own), for the load generator itself (getrusage) and for the
whole machine (/proc/stat), so the per-call CPU of the replicas, HAProxy, Redis, the demo
server, the load generator and everything else on the host explains the ratio.

    python benchmarks/bench_fleet.py [--project agent-mcp-gateway] [--url http://127.0.0.1:8080]
        [--agent researcher | --token TOKEN] [--eras sessionless,session] [--rounds 2]
        [--seconds 20] [--clients 16]

The agent's rate limit must allow the load (the compose demo's agents have the default
600/minute, shared by the fleet): start the stack with GATEWAY_CONFIG_DIR pointing at a copy of
ops/compose/config whose agent has e.g. "rate_limit": "10000000/minute" (its token hash stays
`${RESEARCHER_TOKEN_SHA256}`, so the token in ops/compose/client.env still works), or pass the
--token of an agent whose limit allows it.

Needs the podman CLI set up as ops/stack.sh sets it up (`eval "$(ops/podman-setup.sh env)"`:
replicas stopped and started under another configuration lost their network addresses, and
HAProxy kept resolving the old ones) and to read the containers' processes in /proc (root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ACCEPT = {"Accept": "application/json, text/event-stream"}
SESSION_VERSION = "2025-11-25"
SESSIONLESS_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "bench-fleet", "version": "1"}
TICKS = os.sysconf("SC_CLK_TCK")


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout.strip()


def containers(project: str, service: str) -> list[str]:
    names = podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}",
    ).split()  # fmt: skip
    return sorted(names)


def process_seconds(pid: str) -> float:
    """utime + stime of one process, and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICKS


def pid_namespace(name: str) -> str:
    return os.readlink(f"/proc/{podman('inspect', '--format', '{{.State.Pid}}', name)}/ns/pid")


def cpu_seconds(namespaces: dict[str, str]) -> dict[str, float]:
    """CPU time so far of every process of each container (those in its PID namespace)."""
    names = {namespace: name for name, namespace in namespaces.items()}
    totals = dict.fromkeys(namespaces, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            name = names.get(os.readlink(f"/proc/{entry.name}/ns/pid"))
            if name:
                totals[name] += process_seconds(entry.name)
        except OSError:  # the process ended meanwhile
            continue
    return totals


def host_busy_seconds() -> float:
    """CPU time the whole machine spent on anything but idle and I/O wait, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rpc(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return dict(json.loads(line[5:]))
        raise RuntimeError(f"no JSON-RPC response in the stream: {response.text!r}")
    return dict(response.json())


def echo_call(call_id: int, message: str) -> dict[str, Any]:
    args = {"server": "demo", "tool": "echo", "args": {"message": message}}
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {"name": "execute_tool", "arguments": args},
    }


def check(answer: dict[str, Any], message: str) -> None:
    if answer.get("result", {}).get("content", [{}])[0].get("text") != message:
        raise RuntimeError(f"wrong answer: {answer}")


async def session_client(http: httpx.AsyncClient, auth: dict[str, str], n: int, until: float) -> int:
    """A 2025-11-25 client: one session, its calls sent to the replica that holds it."""
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": SESSION_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }  # fmt: skip
    response = await http.post("/mcp", json=init, headers={**ACCEPT, **auth})
    rpc(response)
    headers = {
        **ACCEPT,
        **auth,
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": SESSION_VERSION,
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    (await http.post("/mcp", json=note, headers=headers)).raise_for_status()
    calls = 0
    while time.monotonic() < until:
        message = f"bench-{n}-{calls}"
        check(rpc(await http.post("/mcp", json=echo_call(calls + 1, message), headers=headers)), message)
        calls += 1
    await http.delete("/mcp", headers=headers)
    return calls


async def sessionless_client(http: httpx.AsyncClient, auth: dict[str, str], n: int, until: float) -> int:
    """A 2026-07-28 client: every request stands alone, so any replica serves it."""
    headers = {
        **ACCEPT,
        **auth,
        "mcp-protocol-version": SESSIONLESS_VERSION,
        "mcp-method": "tools/call",
        "mcp-name": "execute_tool",
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": SESSIONLESS_VERSION,
        "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    calls = 0
    while time.monotonic() < until:
        message = f"bench-{n}-{calls}"
        body = echo_call(calls + 1, message)
        body["params"]["_meta"] = meta
        check(rpc(await http.post("/mcp", json=body, headers=headers)), message)
        calls += 1
    return calls


CLIENTS: dict[str, Callable[[httpx.AsyncClient, dict[str, str], int, float], Awaitable[int]]] = {
    "sessionless": sessionless_client,
    "session": session_client,
}


async def load(args: argparse.Namespace, token: str, era: str, seconds: float) -> tuple[int, float]:
    auth = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as http:
        started = time.monotonic()
        counts = await asyncio.gather(
            *(CLIENTS[era](http, auth, n, started + seconds) for n in range(args.clients))
        )
        return sum(counts), time.monotonic() - started


def phase(args: argparse.Namespace, token: str, era: str, watched: dict[str, list[str]]) -> dict[str, Any]:
    asyncio.run(load(args, token, era, args.warmup))
    load_before = os.getloadavg()[0]
    namespaces = {name: pid_namespace(name) for group in watched.values() for name in group}
    before = cpu_seconds(namespaces)
    host, own, started = host_busy_seconds(), own_cpu(), time.monotonic()
    calls, wall = asyncio.run(load(args, token, era, args.seconds))
    host, own, interval = host_busy_seconds() - host, own_cpu() - own, time.monotonic() - started
    after = cpu_seconds(namespaces)
    cpu = {name: after[name] - before[name] for name in namespaces}
    roles = {role: sum(cpu[name] for name in group) for role, group in watched.items()}
    roles["load generator"] = own
    roles["rest of the machine"] = host - sum(roles.values())
    return {
        "calls": calls,
        "calls_per_s": round(calls / wall, 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_ms_per_call": {role: round(1000 * s / calls, 2) for role, s in roles.items()},
        "per_replica_ms_per_call": {name: round(1000 * cpu[name] / calls, 2) for name in watched["replicas"]},
        "cores_busy": {
            **{role: round(s / interval, 2) for role, s in roles.items()},
            "machine": round(host / interval, 2),
        },
    }


def wait_serving(url: str, slots: int) -> None:
    """Until HAProxy spreads /ready over exactly `slots` replicas."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen = set()
        for _ in range(12):
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                seen.add(response.headers.get("x-gateway-replica"))
        if len(seen) == slots:
            return
        time.sleep(1)
    raise RuntimeError(f"HAProxy does not route to {slots} replicas")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default="agent-mcp-gateway")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--agent", default="researcher", help="its token from ops/compose/client.env")
    parser.add_argument("--token", help="the API token to send instead")
    parser.add_argument("--eras", default="sessionless,session", help="sessionless, session or both")
    parser.add_argument("--rounds", type=int, default=2, help="how many times each configuration runs")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before each phase")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    if "CONTAINERS_CONF" not in os.environ:
        parser.error('podman is not set up as ops/stack.sh runs it: eval "$(ops/podman-setup.sh env)" first')
    eras = args.eras.split(",")
    if unknown := set(eras) - set(CLIENTS):
        parser.error(f"unknown era {', '.join(sorted(unknown))}: sessionless or session")
    token = args.token
    if not token:
        tokens = dict(
            line.split("=", 1)
            for line in (ROOT / "ops/compose/client.env").read_text().split()
            if "=" in line
        )
        token = tokens[f"{args.agent.upper()}_TOKEN"]
    replicas = containers(args.project, "gateway-replica")
    if len(replicas) < 2:
        raise SystemExit(f"{args.project}: {len(replicas)} gateway replicas; is the scale stack up?")
    watched = {
        "replicas": replicas,
        "haproxy": containers(args.project, "haproxy"),
        "redis": containers(args.project, "redis"),
        "demo": containers(args.project, "demo-server"),
        # The rest of the stack, idle but for Prometheus scraping every gateway.
        "prometheus + idle gateway": containers(args.project, "prometheus")
        + containers(args.project, "gateway"),
    }
    results: list[dict[str, Any]] = []
    try:
        for round_ in range(1, args.rounds + 1):
            for serving in (replicas, replicas[:1]):
                if serving is not replicas:
                    podman("stop", "-t", "35", *replicas[1:])
                wait_serving(args.url, len(serving))
                for era in eras:
                    measured = phase(args, token, era, {**watched, "replicas": serving})
                    results.append({"round": round_, "replicas": len(serving), "era": era, **measured})
                    print(json.dumps(results[-1]), flush=True)
                if serving is not replicas:
                    podman("start", *replicas[1:])
    finally:
        stopped = [
            name for name in replicas if podman("inspect", "--format", "{{.State.Status}}", name) != "running"
        ]
        if stopped:
            podman("start", *stopped)
    summary = {}
    for era in eras:
        rates = {
            n: [r["calls_per_s"] for r in results if r["era"] == era and r["replicas"] == n]
            for n in (len(replicas), 1)
        }
        summary[era] = {
            **{f"{n} replica{'s' if n > 1 else ''} calls/s": rate for n, rate in rates.items()},
            "ratio per round": [
                round(many / one, 2) for many, one in zip(rates[len(replicas)], rates[1], strict=True)
            ],
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
