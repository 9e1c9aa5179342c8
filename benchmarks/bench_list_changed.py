"""How soon a client hears `notifications/tools/list_changed` after a downstream's tools change.

The gateway (in process, over Streamable HTTP through its ASGI app) fronts the list_changing
fixture over stdio; an agent in the aggregate view lists its tools, then calls the fixture's
`add_tool`, which changes the fixture's tools and announces it. Measured per trial, from the
call's start: when the downstream's own notification reached the gateway's cache refresh is not
visible from outside, so the figure is the whole path (call, downstream notification, the
gateway re-reading the tool list, its 200 ms debounce, delivery). Target: within 1 s.

    python benchmarks/bench_list_changed.py [--trials N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: GatewayFiles, asgi_gateway, fixtures

import mcp_types as mt  # noqa: E402
from fastmcp.client.messages import MessageHandler  # noqa: E402

from conftest import asgi_gateway, fixture_server, new_gateway_files  # noqa: E402


class Heard(MessageHandler):
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_tool_list_changed(self, message: mt.ToolListChangedNotification) -> None:
        self.event.set()


async def run(trials: int) -> list[float]:
    files = new_gateway_files(Path(tempfile.mkdtemp(prefix="bench-list-changed-")))
    files.write_servers({"changing": fixture_server("list_changing")})
    files.write_rules({"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["*"]}}}})
    heard = Heard()
    delays = []
    async with (
        asgi_gateway(files) as service,
        service.client(headers={"X-Agent-Id": "ide"}, message_handler=heard) as client,
    ):
        for trial in range(trials):
            await client.list_tools()
            heard.event.clear()
            started = time.perf_counter()
            await client.call_tool("changing__add_tool", {"name": f"tool{trial}"})
            await asyncio.wait_for(heard.event.wait(), 10)
            delays.append(time.perf_counter() - started)
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    options = parser.parse_args(argv)
    delays = sorted(asyncio.run(run(options.trials)))
    p95 = delays[min(len(delays) - 1, round(0.95 * (len(delays) - 1)))]
    figures: dict[str, Any] = {
        "trials": len(delays),
        "median_ms": round(statistics.median(delays) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(delays[-1] * 1000, 1),
    }
    verdict = "met" if figures["max_ms"] < 1000 else "MISS"
    print(
        f"list_changed from call start to client: median {figures['median_ms']} ms, "
        f"p95 {figures['p95_ms']} ms, max {figures['max_ms']} ms over {figures['trials']} trials "
        f"(target < 1000 ms: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
