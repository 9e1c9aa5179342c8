"""Calls per second through HAProxy with 1 and with 3 gateway replicas, and the CPU per call.

Runs against a scale stack that is already up (`ops/stack.sh up --scale`, which writes the API
tokens to ops/compose/client.env). Both phases go through the same HAProxy; for the 1-replica
phase two replicas are stopped (HAProxy takes them out) and started again afterwards.

The load is raw JSON-RPC over httpx: N session-era clients, each `initialize` +
`notifications/initialized` once, then `tools/call execute_tool {server: demo, tool: echo}` in a
loop; every answer is checked. CPU is read from each container's cgroup (cpuacct.usage on cgroup
v1, cpu.stat usage_usec on v2) before and after a phase, so the per-call CPU of the replicas,
HAProxy, the demo server and the load generator itself explains the ratio: with 2 cores, three
replicas can add at most the second core, and HAProxy, the downstream server and the client
share it.

    python benchmarks/bench_fleet.py [--project agent-mcp-gateway] [--url http://127.0.0.1:8080]
        [--agent researcher | --token TOKEN] [--seconds 20] [--clients 24]

The agent's rate limit must allow the load (the compose demo's agents have the default
600/minute, shared by the fleet): start the stack with GATEWAY_CONFIG_DIR pointing at a copy of
ops/compose/config whose agent has e.g. "rate_limit": "1000000/minute", and pass its --token.

Needs the podman CLI (`eval "$(ops/podman-setup.sh env)"`) and root for the cgroup files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ACCEPT = {"Accept": "application/json, text/event-stream"}
VERSION = "2025-11-25"


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout.strip()


def containers(project: str, service: str) -> list[str]:
    names = podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}",
    ).split()  # fmt: skip
    return sorted(names)


def cpu_seconds(name: str) -> float:
    """CPU time of every process in the container so far (its cgroup's counter)."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", name)
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage").read_text()) / 1e9
        if controllers == "":  # cgroup v2
            stat = Path(f"/sys/fs/cgroup{path}/cpu.stat").read_text().split()
            return int(stat[stat.index("usage_usec") + 1]) / 1e6
    raise RuntimeError(f"no CPU accounting found for {name}")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rpc(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return dict(json.loads(line[5:]))
    return dict(response.json())


async def client(http: httpx.AsyncClient, token: str, n: int, until: float) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
    }  # fmt: skip
    response = await http.post("/mcp", json=init, headers={**ACCEPT, **auth})
    response.raise_for_status()
    headers = {
        **ACCEPT,
        **auth,
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": VERSION,
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    (await http.post("/mcp", json=note, headers=headers)).raise_for_status()
    calls = 0
    while time.monotonic() < until:
        message = f"bench-{n}-{calls}"
        args = {"server": "demo", "tool": "echo", "args": {"message": message}}
        body = {
            "jsonrpc": "2.0",
            "id": calls + 1,
            "method": "tools/call",
            "params": {"name": "execute_tool", "arguments": args},
        }
        answer = rpc(await http.post("/mcp", json=body, headers=headers))
        if answer.get("result", {}).get("content", [{}])[0].get("text") != message:
            raise RuntimeError(f"wrong answer: {answer}")
        calls += 1
    await http.delete("/mcp", headers=headers)
    return calls


async def phase(args: argparse.Namespace, token: str, watched: dict[str, list[str]]) -> dict[str, Any]:
    before = {role: sum(cpu_seconds(c) for c in names) for role, names in watched.items()}
    own = own_cpu()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as http:
        started = time.monotonic()
        counts = await asyncio.gather(
            *(client(http, token, n, started + args.seconds) for n in range(args.clients))
        )
        wall = time.monotonic() - started
    calls = sum(counts)
    cpu = {role: sum(cpu_seconds(c) for c in names) - before[role] for role, names in watched.items()}
    cpu["client"] = own_cpu() - own
    return {
        "calls": calls,
        "calls_per_s": round(calls / wall, 1),
        "cpu_ms_per_call": {role: round(1000 * s / calls, 2) for role, s in cpu.items()},
        "cores_busy": {role: round(s / wall, 2) for role, s in cpu.items()},
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
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=24)
    args = parser.parse_args()
    tokens = dict(
        line.split("=", 1) for line in (ROOT / "ops/compose/client.env").read_text().split() if "=" in line
    )
    token = tokens[f"{args.agent.upper()}_TOKEN"]
    replicas = containers(args.project, "gateway-replica")
    watched = {
        "replicas": replicas,
        "haproxy": containers(args.project, "haproxy"),
        "demo": containers(args.project, "demo-server"),
        "redis": containers(args.project, "redis"),
    }
    wait_serving(args.url, len(replicas))
    results = {f"{len(replicas)} replicas": asyncio.run(phase(args, token, watched))}
    podman("stop", "-t", "35", *replicas[1:])
    try:
        wait_serving(args.url, 1)
        watched["replicas"] = replicas[:1]
        results["1 replica"] = asyncio.run(phase(args, token, watched))
    finally:
        podman("start", *replicas[1:])
    one, many = results["1 replica"], results[f"{len(replicas)} replicas"]
    results["ratio"] = round(many["calls_per_s"] / one["calls_per_s"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
