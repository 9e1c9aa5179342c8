"""Rate-limit charge cost: `RateLimits.charge` with memory storage vs Redis on loopback.

Every agent operation pays for one charge, so this is what `GATEWAY_RATE_LIMIT_STORAGE=redis://...`
adds per call. Starts its own redis-server (Debian package `redis-server`) on a free loopback
port in a temporary folder, unless `--redis URL` names one. Both storages are measured in the same
run, alternating in blocks, on uvloop like the served gateway.

    python benchmarks/bench_rate_limit.py [--calls N] [--agents N] [--redis URL]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvloop
from timing import clock_overhead_ns

from agent_mcp_gateway.access.ratelimit import RateLimits

LIMIT = "1000000/minute"  # never reached: every charge is a counted, allowed operation


@contextmanager
def redis_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


async def measure(url: str, calls: int, agents: int) -> dict[str, list[int]]:
    storages = {"memory": RateLimits(LIMIT), "redis": RateLimits(LIMIT, url)}
    for limits in storages.values():
        await limits.start()
    assert storages["redis"].state == "shared", storages["redis"].status()
    times: dict[str, list[int]] = {name: [] for name in storages}
    clock = time.perf_counter_ns
    block = 500
    for start in range(0, calls, block):
        for name, limits in storages.items():
            for n in range(start, min(calls, start + block)):
                agent = f"agent{n % agents}"
                begin = clock()
                await limits.charge(agent, None)
                times[name].append(clock() - begin)
    for limits in storages.values():
        await limits.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--redis", help="a running Redis to use instead of starting one")
    args = parser.parse_args()
    overhead = clock_overhead_ns()
    if args.redis:
        times = uvloop.run(measure(args.redis, args.calls, args.agents))
    else:
        with redis_server() as url:
            times = uvloop.run(measure(url, args.calls, args.agents))
    print(f"RateLimits.charge, {args.calls} calls each over {args.agents} agents, limit {LIMIT}")
    for name, samples in times.items():
        cut = statistics.quantiles([t - overhead for t in samples], n=100)
        print(
            f"  {name:6}  p50 {cut[49] / 1000:7.1f} us   p95 {cut[94] / 1000:7.1f} us   p99 {cut[98] / 1000:7.1f} us"
        )


if __name__ == "__main__":
    main()
