"""What downstream isolation costs: an agent's first call, which starts its own downstream
session (for stdio, a process), against its later calls; and the memory each idle stdio
instance holds.

The gateway runs in process over Streamable HTTP (its ASGI app) in front of the echo fixture
over stdio in the default `agent` isolation. Each of N agents makes one first call and M later
calls; the figures are the medians over agents (first) and over all later calls. Memory is the
resident set (VmRSS) of each agent's server process once idle, and the same for the shared
(catalog) session's process for comparison.

    python benchmarks/bench_isolation.py [--agents N] [--calls M] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: GatewayFiles, asgi_gateway, fixtures

from conftest import AsgiGateway, asgi_gateway, eventually, fixture_server, new_gateway_files  # noqa: E402


def rss_kib(pid: int) -> int:
    """A process's resident set in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def timed_call(client: Any, agent: str) -> float:
    arguments = {"agent_id": agent, "server": "echo", "tool": "echo", "args": {"text": "hi"}}
    started = time.perf_counter()
    result = await client.call_tool_mcp("execute_tool", arguments)
    elapsed = time.perf_counter() - started
    if result.is_error:
        raise SystemExit(f"call failed: {result.content}")
    return elapsed


def process_ids(service: AsgiGateway) -> dict[str, int]:
    pids = {}
    for instance in service.gateway.pool.instances("echo"):
        connection = getattr(instance._wire, "calls", None)
        if connection is not None:
            pids[instance.owner or "shared"] = connection.pgid
    return pids


async def run(agents: int, calls: int) -> dict[str, Any]:
    files = new_gateway_files(Path(tempfile.mkdtemp(prefix="bench-isolation-")))
    files.write_servers({"echo": fixture_server("echo")})
    names = [f"agent{n}" for n in range(agents)]
    files.write_rules({"agents": {name: {"allow": {"servers": ["*"]}} for name in names}})
    first, later = [], []
    async with asgi_gateway(files, GATEWAY_MAX_INSTANCES=str(agents)) as service:
        if not await eventually(lambda: service.gateway.ready, 60):
            raise SystemExit("the echo server did not start")
        for name in names:  # a session belongs to one agent: one client each
            async with service.client() as client:
                first.append(await timed_call(client, name))
                later.extend([await timed_call(client, name) for _ in range(calls)])
        await asyncio.sleep(1)  # let the servers settle after their last call
        pids = process_ids(service)
        rss = {owner: rss_kib(pid) for owner, pid in pids.items()}
    owned = [kib for owner, kib in rss.items() if owner != "shared"]
    return {
        "agents": agents,
        "first_call_ms_median": round(statistics.median(first) * 1000, 1),
        "later_call_ms_median": round(statistics.median(later) * 1000, 2),
        "first_call_extra_ms": round((statistics.median(first) - statistics.median(later)) * 1000, 1),
        "idle_instance_rss_mib_median": round(statistics.median(owned) / 1024, 1) if owned else None,
        "shared_session_rss_mib": round(rss["shared"] / 1024, 1) if "shared" in rss else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="later calls per agent")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.agents < 1 or args.calls < 1:
        parser.error("--agents and --calls must be at least 1")
    figures = asyncio.run(run(args.agents, args.calls))
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
