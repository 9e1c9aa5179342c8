"""The milestone phases: sequential latency (with an optional baseline checkout), CPU per
request against the baseline, 100+ concurrent sessions, memory over rounds of load."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .common import ROOT, STDIO_SERVER, BenchError, Results, log, summarize_ms
from .load import Session, StdioSession, active_sessions_metric, alternated, run_concurrent, warm_up
from .paths import stdio_env
from .stack import Stack, closed_client_connections, cpu_seconds, rss_mib


async def phase_latency(stack: Stack, calls: int, warmup: int, results: Results) -> None:
    """Sequential calls, one session per path, the paths alternated in random order.

    With a baseline (`--baseline`), a second gateway from another checkout is a third path, so
    a change's before and after are measured in the same run.
    """
    log(f"latency: {warmup} warm-up + {calls} calls per path, alternated")
    paths = {"direct": Session(stack.echo_url, False), "gateway": Session(stack.gateway_url, True)}
    workers = {"gateway": stack.worker_pid()}
    if stack.baseline is not None:
        paths["baseline"] = Session(stack.baseline_url, True)
        workers["baseline"] = stack.worker_pid(stack.baseline)
    assert stack.echo is not None
    try:
        for session in paths.values():
            await session.open()
        await warm_up(paths.values(), warmup)
        cpu_before = {name: cpu_seconds(pid) for name, pid in workers.items()}
        echo_before = cpu_seconds(stack.echo.process.pid)
        closed_before = closed_client_connections(stack.echo_port)
        wall = time.perf_counter()
        timings = await alternated(paths, calls, seed=7)
        wall = time.perf_counter() - wall
        # This load generator keeps its connections; TIME_WAIT sockets towards the echo server
        # that appear meanwhile are connections the gateways opened and closed.
        closed = closed_client_connections(stack.echo_port) - closed_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in workers.items()}
        echo_cpu = cpu_seconds(stack.echo.process.pid) - echo_before
    finally:
        for session in paths.values():
            await session.close()
    d, g = summarize_ms(timings["direct"]), summarize_ms(timings["gateway"])
    results.latency = {
        "direct": d,
        "gateway": g,
        "ratio_p50": round(g["p50"] / d["p50"], 2),
        "ratio_p95": round(g["p95"] / d["p95"], 2),
        "overhead_p50_ms": round(g["p50"] - d["p50"], 3),
        "overhead_p95_ms": round(g["p95"] - d["p95"], 3),
        "wall_seconds": round(wall, 1),
        # CPU the gateway worker spent per gateway call, and the echo server per call it served
        # (one direct call plus each gateway's downstream call for each round).
        "gateway_worker_cpu_ms_per_call": round(cpu["gateway"] * 1000 / calls, 2),
        "echo_cpu_ms_per_call": round(echo_cpu * 1000 / (len(paths) * calls), 2),
        "downstream_connections_closed": closed,
        "downstream_connections_per_call": round(closed / ((len(paths) - 1) * calls), 2),
        "slowest_gateway_calls_ms": sorted(round(t * 1000, 1) for t in timings["gateway"])[-5:],
        "slowest_direct_calls_ms": sorted(round(t * 1000, 1) for t in timings["direct"])[-5:],
    }
    if "baseline" in paths:
        b = summarize_ms(timings["baseline"])
        results.latency["baseline"] = {
            **b,
            "overhead_p50_ms": round(b["p50"] - d["p50"], 3),
            "overhead_p95_ms": round(b["p95"] - d["p95"], 3),
            "worker_cpu_ms_per_call": round(cpu["baseline"] * 1000 / calls, 2),
        }


COMPARED = {
    "ping": ("ping", {}),
    "list_servers": ("tools/call", {"name": "list_servers", "arguments": {}}),
    "execute_tool, HTTP downstream": (
        "tools/call",
        {"name": "execute_tool", "arguments": {"server": "echo", "tool": "echo", "args": {"text": "hi"}}},
    ),
    "execute_tool, stdio downstream": (
        "tools/call",
        {
            "name": "execute_tool",
            "arguments": {"server": STDIO_SERVER, "tool": "echo", "args": {"text": "hi"}},
        },
    ),
}


async def phase_compare(stack: Stack, calls: int, rounds: int, results: Results) -> None:
    """CPU per request of this checkout's gateway and the `--baseline` one, side by side: over
    HTTP (ping, list_servers, execute_tool to each downstream) and over stdio (execute_tool to
    each downstream), each measured in `rounds` blocks of `calls`, the two checkouts alternating
    which goes first; medians of the blocks. CPU per request is steadier than latency on a busy
    machine, and a change that saves CPU shows there first."""
    if stack.baseline_source is None or stack.baseline is None:
        raise BenchError("the compare phase needs --baseline DIR (another checkout's app directory)")
    log(f"compare: {rounds} rounds x {calls} requests per kind and checkout, alternated")
    env = stdio_env(stack)
    apps = {"new": ROOT / "app", "baseline": stack.baseline_source}
    urls = {"new": stack.gateway_url, "baseline": stack.baseline_url}
    workers = {"new": stack.worker_pid(), "baseline": stack.worker_pid(stack.baseline)}
    http: dict[str, Session] = {name: Session(url, True) for name, url in urls.items()}
    stdio: dict[tuple[str, str], StdioSession] = {}
    for name, app in apps.items():
        with_app = {**env, "PYTHONPATH": os.pathsep.join([str(app), env["PYTHONPATH"]])}
        for server in (STDIO_SERVER, "echo"):
            with_audit = {**with_app, "GATEWAY_AUDIT_LOG": str(stack.work / f"compare-{name}-{server}.jsonl")}
            command = [sys.executable, "-m", "agent_mcp_gateway"]
            log_path = stack.work / f"compare-{name}-{server}.log"
            stdio[(name, server)] = StdioSession(command, with_audit, log_path, True, server)
    cpu: dict[tuple[str, str], list[float]] = {}
    sessions: list[Session | StdioSession] = [*http.values(), *stdio.values()]
    try:
        for session in sessions:
            await session.open()
        kinds: list[tuple[str, Callable[[str], Awaitable[Any]], Callable[[str], int]]] = []
        for kind, (method, params) in COMPARED.items():

            async def over_http(name: str, method: str = method, params: dict[str, Any] = params) -> Any:
                return await http[name].request(method, params)

            kinds.append((f"HTTP gateway: {kind}", over_http, workers.__getitem__))
        for server, label in ((STDIO_SERVER, "stdio"), ("echo", "HTTP")):

            async def over_stdio(name: str, server: str = server) -> Any:
                return await stdio[(name, server)].echo("hi")

            def stdio_pid(name: str, server: str = server) -> int:
                return stdio[(name, server)].pid

            kinds.append((f"stdio gateway: execute_tool, {label} downstream", over_stdio, stdio_pid))
        for _kind, send, _pid in kinds:
            for name in apps:
                for _ in range(20):
                    await send(name)
        for number in range(rounds):
            for kind, send, pid in kinds:
                for name in apps if number % 2 == 0 else reversed(list(apps)):
                    before = cpu_seconds(pid(name))
                    for _ in range(calls):
                        await send(name)
                    cpu.setdefault((kind, name), []).append((cpu_seconds(pid(name)) - before) * 1000 / calls)
    finally:
        for session in sessions:
            await session.close()
    rows = {}
    for kind, _, _ in kinds:
        new, old = statistics.median(cpu[(kind, "new")]), statistics.median(cpu[(kind, "baseline")])
        rows[kind] = {
            "new_cpu_ms": round(new, 2),
            "baseline_cpu_ms": round(old, 2),
            # None when the baseline's CPU is below the clock's tick (a smoke run's few requests)
            "ratio": round(new / old, 2) if old else None,
        }
    results.compare = {"calls": calls, "rounds": rounds, "cpu_ms_per_request": rows}


async def phase_concurrency(
    stack: Stack, sessions: int, calls: int, paced_rate: float | None, paced_seconds: float, results: Results
) -> None:
    log(
        f"concurrency: {sessions} sessions held at once x {calls} calls each, no pause (gateway, then direct)"
    )
    saturated = {
        "gateway": await run_concurrent(stack.gateway_url, True, sessions, calls, stack, stack.gateway_port),
    }
    stack.check_alive()
    saturated["direct"] = await run_concurrent(stack.echo_url, False, sessions, calls, stack, stack.echo_port)
    stack.check_alive()
    # Paced: the same number of sessions held, at a rate the gateway can serve (by default 40 % of
    # the throughput it just reached), so the latency is not queueing behind saturation.
    rate = paced_rate or max(5.0, round(0.4 * saturated["gateway"]["throughput_per_s"], 1))
    log(
        f"concurrency: {sessions} sessions held at once, paced at {rate} calls/s for {paced_seconds:.0f} s each "
        "(gateway, then direct)"
    )
    paced = {
        "gateway": await run_concurrent(
            stack.gateway_url, True, sessions, 0, stack, stack.gateway_port, rate=rate, duration=paced_seconds
        )
    }
    stack.check_alive()
    paced["direct"] = await run_concurrent(
        stack.echo_url, False, sessions, 0, stack, stack.echo_port, rate=rate, duration=paced_seconds
    )
    stack.check_alive()

    def compare(pair: dict[str, Any]) -> dict[str, Any]:
        g, d = pair["gateway"], pair["direct"]
        return {
            **pair,
            "ratio_p95": round(g["p95"] / d["p95"], 2) if d["p95"] else None,
            "overhead_p50_ms": round(g["p50"] - d["p50"], 3),
            "overhead_p95_ms": round(g["p95"] - d["p95"], 3),
            "throughput_ratio": round(g["throughput_per_s"] / d["throughput_per_s"], 2)
            if d["throughput_per_s"]
            else None,
        }

    results.concurrency = {
        "sessions": sessions,
        "calls_per_session": calls,
        "paced_rate_per_s": rate,
        "paced_seconds": paced_seconds,
        "saturated": compare(saturated),
        "paced": compare(paced),
    }
    for kind, pair in (("saturated", saturated), ("paced", paced)):
        for name, outcome in pair.items():
            if outcome["errors"] or outcome["sessions_opened"] < sessions:
                results.errors.append(
                    f"concurrency/{kind}/{name}: {outcome['sessions_opened']}/{sessions} sessions opened, "
                    f"{outcome['errors']} errors, e.g. {outcome['error_samples'][:2]}"
                )


async def _drain(
    session: Session, queue: Iterator[int], label: str, timings: list[float], errors: list[str]
) -> None:
    """Open `session`, make calls while `queue` (shared with other sessions) lasts, delete it."""
    try:
        await session.open()
        for n in queue:
            try:
                timings.append(await session.echo(f"{label}-{n}"))
            except Exception as exc:  # counted, never fatal to the others
                errors.append(f"call: {exc!r}"[:300])
    except Exception as exc:
        errors.append(f"open: {exc!r}"[:300])
    finally:
        await session.close()


async def phase_memory(stack: Stack, rounds: int, calls: int, concurrency: int, results: Results) -> None:
    """Rounds of load through fresh sessions (opened, used, deleted); RSS after each round."""
    log(f"memory: {rounds} rounds x {calls} gateway calls, {concurrency} sessions per round")
    worker = stack.worker_pid()
    baseline = rss_mib(worker)
    per_round: list[dict[str, Any]] = []
    errors: list[str] = []
    for number in range(1, rounds + 1):
        sessions = [Session(stack.gateway_url, True) for _ in range(concurrency)]
        timings: list[float] = []
        queue = iter(range(calls))
        started = time.perf_counter()
        await asyncio.gather(*(_drain(s, queue, f"r{number}", timings, errors) for s in sessions))
        wall = time.perf_counter() - started
        stack.check_alive()
        await asyncio.sleep(0.5)  # let the DELETEs and their cleanup settle before sampling
        rss = rss_mib(worker)
        stats = summarize_ms(timings)
        per_round.append(
            {
                "round": number,
                "calls": len(timings),
                "throughput_per_s": round(len(timings) / wall, 1),
                "p50": stats["p50"],
                "p95": stats["p95"],
                "rss_mib": round(rss, 1),
                "active_sessions": await active_sessions_metric(stack),
            }
        )
        log(
            f"  round {number}: {len(timings)} calls, {per_round[-1]['throughput_per_s']}/s, "
            f"p95 {stats['p95']} ms, worker RSS {rss:.1f} MiB"
        )
    growth = per_round[-1]["rss_mib"] - per_round[min(1, len(per_round) - 1)]["rss_mib"]
    reference = per_round[min(1, len(per_round) - 1)]["rss_mib"]
    results.memory = {
        "rounds": rounds,
        "calls_per_round": calls,
        "sessions_per_round": concurrency,
        "rss_before_mib": round(baseline, 1),
        "per_round": per_round,
        "growth_round2_to_last_mib": round(growth, 1),
        "growth_round2_to_last_pct": round(100 * growth / reference, 1) if reference else None,
        "errors": len(errors),
        "error_samples": errors[:5],
        "audit_log_bytes": sum(p.stat().st_size for p in stack.work.glob("audit.jsonl*")),
    }
    if errors:
        results.errors.append(f"memory: {len(errors)} errors, e.g. {errors[:2]}")
