"""Policy decision cost: 100 agents x 50 rules each, literal and glob patterns mixed.

Every tool call pays for one decision on the hot path, so its median has to stay far below
the gateway's millisecond budget (target: under 5 microseconds). Building the engine is paid
once per configuration reload.

    python benchmarks/bench_policy.py [--calls N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from timing import clock_overhead_ns

from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.config import RulesConfig

AGENTS = 100
RULES_PER_AGENT = 50
SERVERS = [f"server{n:02d}" for n in range(40)] + [f"browser_{n}" for n in range(10)]
TOOLS = [
    f"{verb}_{noun}"
    for verb in ("get", "list", "drop", "delete", "write", "read")
    for noun in ("user", "table", "file", "page", "all_items")
]


def glob_of(name: str, rng: random.Random) -> str:
    """A glob that matches `name` (or its family): a prefix star, a `?` or a class."""
    kind = rng.randrange(4)
    if kind == 0:
        return name[: rng.randint(1, max(1, len(name) - 1))] + "*"
    if kind == 1:
        index = rng.randrange(len(name))
        return name[:index] + "?" + name[index + 1 :]
    if kind == 2:
        return name[:-1] + f"[{name[-1]}x]"
    return "*" + name[rng.randint(1, len(name) - 1) :]


def pattern(names: list[str], rng: random.Random) -> str:
    name = rng.choice(names)
    return glob_of(name, rng) if rng.random() < 0.4 else name


def agent_rules(rng: random.Random) -> dict[str, Any]:
    """50 patterns split across deny.servers, deny.tools, allow.servers and allow.tools."""
    counts = dict(
        zip(("deny_servers", "deny_tools", "allow_servers", "allow_tools"), (5, 15, 15, 15), strict=True)
    )
    assert sum(counts.values()) == RULES_PER_AGENT

    def tool_map(total: int) -> dict[str, list[str]]:
        tools: dict[str, list[str]] = {}
        for _ in range(total):
            tools.setdefault(pattern(SERVERS, rng), []).append(pattern(TOOLS, rng))
        return tools

    return {
        "deny": {
            "servers": [pattern(SERVERS, rng) for _ in range(counts["deny_servers"])],
            "tools": tool_map(counts["deny_tools"]),
        },
        "allow": {
            "servers": [pattern(SERVERS, rng) for _ in range(counts["allow_servers"])],
            "tools": tool_map(counts["allow_tools"]),
        },
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rng = random.Random(options.seed)

    rules = RulesConfig.model_validate({"agents": {f"agent{n:03d}": agent_rules(rng) for n in range(AGENTS)}})
    builds = []
    for _ in range(5):
        start = time.perf_counter_ns()
        engine = PolicyEngine(rules)
        builds.append(time.perf_counter_ns() - start)

    agents = engine.agent_ids
    requests = [
        (rng.choice(agents), rng.choice(SERVERS), rng.choice([None, *TOOLS])) for _ in range(options.calls)
    ]
    # Server names never seen before miss the engine's per-server cache: the worst case.
    unseen = [(agent, f"{server}-{n}", tool) for n, (agent, server, tool) in enumerate(requests)]
    for agent, server, tool in requests[:10_000]:  # warm the cache as a running gateway has
        engine.decide(agent, server, tool)

    overhead = clock_overhead_ns()
    print(f"rules: {AGENTS} agents x {RULES_PER_AGENT} patterns = {AGENTS * RULES_PER_AGENT}")
    print(f"build PolicyEngine: median {statistics.median(builds) / 1e6:.1f} ms (of 5 builds)")
    for label, batch in (("known servers", requests), ("unseen server names", unseen)):
        micro, allowed = _time_decisions(engine, batch, overhead)
        median = percentile(micro, 0.50)
        print(f"decide(), {label}: {len(micro)} calls, {allowed:.0%} allowed")
        print(
            f"  median {median:.2f} us   p95 {percentile(micro, 0.95):.2f} us   "
            f"p99 {percentile(micro, 0.99):.2f} us   "
            f"(target median < 5 us: {'met' if median < 5 else 'MISSED'})"
        )
    print(f"(timer overhead of {overhead:.0f} ns per call removed)")


def _time_decisions(
    engine: PolicyEngine, requests: list[tuple[str, str, str | None]], overhead: float
) -> tuple[list[float], float]:
    """Microseconds per decision, sorted, and the share of requests allowed."""
    decide = engine.decide
    clock = time.perf_counter_ns
    timings: list[int] = []
    allowed = 0
    for agent, server, tool in requests:
        start = clock()
        decision = decide(agent, server, tool)
        timings.append(clock() - start)
        allowed += decision.allowed
    timings.sort()
    return [(t - overhead) / 1000 for t in timings], allowed / len(requests)


if __name__ == "__main__":
    main()
