"""The paths of issue "Performance": protocol eras, downstream transports, views and the
gateway over stdio, sequential and in closed loops; discovery time; one vs two workers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    AGENT,
    AGGREGATE_TOKEN,
    ECHO_SERVER,
    ERAS,
    MODERN,
    PROTOCOL,
    STDIO_SERVER,
    BenchError,
    Results,
    log,
    summarize_ms,
)
from .load import EchoCalls, Session, StdioSession, alternated, run_concurrent, warm_up
from .stack import Stack, cpu_seconds, rss_mib


def stdio_env(stack: Stack) -> dict[str, str]:
    """The gateway's settings for a local client that starts it over stdio as `AGENT`."""
    env = {k: v for k, v in stack.gateway_env.items() if not k.startswith("GATEWAY_HTTP")}
    return {
        **env,
        "GATEWAY_TRANSPORT": "stdio",
        "GATEWAY_AGENT": AGENT,
        "GATEWAY_AUDIT_LOG": str(stack.work / "stdio-audit.jsonl"),
    }


def path_sessions(stack: Stack) -> dict[str, tuple[Session | StdioSession, str]]:
    """Every path of the sequential phase, with the direct path its overhead is measured against.

    `direct/stdio` is a raw JSON-RPC client speaking stdio to its own echo fixture process;
    `stdio-gw/...` is a raw client speaking stdio to `python -m agent_mcp_gateway`.
    """
    gw = stack.gateway_url
    stdio_echo = [sys.executable, str(ECHO_SERVER)]
    stdio_gateway = [sys.executable, "-m", "agent_mcp_gateway"]
    paths: dict[str, tuple[Session | StdioSession, str]] = {
        "direct/http/2025-11-25": (Session(stack.echo_url, False, era=PROTOCOL), ""),
        "direct/http/2026-07-28": (Session(stack.echo_url, False, era=MODERN), ""),
        "direct/stdio": (
            StdioSession(stdio_echo, stack.gateway_env, stack.work / "direct-stdio.log", False, ""),
            "",
        ),
    }
    for era in ERAS:
        paths[f"execute_tool/http/{era}"] = (Session(gw, True, era=era), f"direct/http/{era}")
        paths[f"execute_tool/stdio/{era}"] = (
            Session(gw, True, era=era, server=STDIO_SERVER),
            "direct/stdio",
        )
        paths[f"aggregate/http/{era}"] = (
            Session(gw, True, era=era, tool="echo__echo", token=AGGREGATE_TOKEN),
            f"direct/http/{era}",
        )
        paths[f"aggregate/stdio/{era}"] = (
            Session(gw, True, era=era, tool=f"{STDIO_SERVER}__echo", token=AGGREGATE_TOKEN),
            "direct/stdio",
        )
    env = stdio_env(stack)
    paths["stdio-gw/execute_tool/stdio"] = (
        StdioSession(stdio_gateway, env, stack.work / "stdio-gateway.log", True, STDIO_SERVER),
        "direct/stdio",
    )
    paths["stdio-gw/execute_tool/http"] = (
        StdioSession(stdio_gateway, env, stack.work / "stdio-gateway-http.log", True, "echo"),
        f"direct/http/{PROTOCOL}",
    )
    return paths


async def phase_paths(stack: Stack, calls: int, warmup: int, results: Results) -> None:
    """Sequential calls on every path, alternated in random order call by call."""
    paths = path_sessions(stack)
    log(f"paths: {len(paths)} paths x ({warmup} warm-up + {calls} calls), alternated")
    assert stack.echo is not None
    worker = stack.worker_pid()
    sessions: dict[str, EchoCalls] = {name: session for name, (session, _) in paths.items()}
    try:
        for client, _ in paths.values():
            await client.open()
        await warm_up(sessions.values(), warmup)
        stdio_pids = {name: s.pid for name, (s, _) in paths.items() if isinstance(s, StdioSession)}
        pids = {"gateway_worker": worker, "echo_server": stack.echo.process.pid, **stdio_pids}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        timings = await alternated(sessions, calls, seed=9)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        rss = {name: round(rss_mib(pid), 1) for name, pid in pids.items()}
    finally:
        for session, _ in paths.values():
            await session.close()
    table: dict[str, Any] = {}
    for name, (_, direct) in paths.items():
        row: dict[str, Any] = summarize_ms(timings[name])
        if direct:
            d = table[direct]
            row["vs"] = direct
            row["overhead_p50_ms"] = round(row["p50"] - d["p50"], 3)
            row["overhead_p95_ms"] = round(row["p95"] - d["p95"], 3)
        table[name] = row
    http_gateway_calls = calls * sum(1 for name in paths if not name.startswith(("direct", "stdio-gw")))
    echo_calls = calls * sum(
        1 for name, (s, _) in paths.items() if name.endswith("/http") or "/http/" in name
    )
    results.paths = {
        "calls": calls,
        "paths": table,
        # CPU per call: the HTTP gateway worker over every call it served (all its paths), the
        # echo HTTP server over every call that reached it (direct and through a gateway), a
        # stdio process over its own path's calls.
        "cpu_ms_per_call": {
            "gateway_worker": round(cpu["gateway_worker"] * 1000 / http_gateway_calls, 2),
            "echo_server": round(cpu["echo_server"] * 1000 / echo_calls, 2),
            **{name: round(cpu[name] * 1000 / calls, 2) for name in stdio_pids},
        },
        "rss_mib": rss,
    }


async def phase_closed_loop(stack: Stack, counts: list[int], calls: int, results: Results) -> None:
    """Closed loop (every session calls back to back) with each count of sessions, per era:
    direct, execute_tool and the aggregate view; calls/s and CPU seconds per call."""
    runs: dict[str, Any] = {}
    gw, port = stack.gateway_url, stack.gateway_port
    for era in ERAS:
        for count in counts:
            log(f"closed loop: {count} sessions x {calls} calls, {era} (direct, execute_tool, aggregate)")
            kinds: dict[str, tuple[str, int, bool, Callable[[], Session]]] = {
                "direct": (
                    stack.echo_url,
                    stack.echo_port,
                    False,
                    lambda era=era: Session(stack.echo_url, False, 120, era),
                ),
                "execute_tool": (gw, port, True, lambda era=era: Session(gw, True, 120, era)),
                "aggregate": (
                    gw,
                    port,
                    True,
                    lambda era=era: Session(gw, True, 120, era, tool="echo__echo", token=AGGREGATE_TOKEN),
                ),
            }
            row: dict[str, Any] = {}
            for kind, (url, listen, gateway, make) in kinds.items():
                outcome = await run_concurrent(url, gateway, count, calls, stack, listen, make=make)
                stack.check_alive()
                done = max(1, outcome["calls"])
                cpu = outcome["cpu_seconds"]
                row[kind] = {
                    "calls": outcome["calls"],
                    "errors": outcome["errors"],
                    "error_samples": outcome["error_samples"],
                    "throughput_per_s": outcome["throughput_per_s"],
                    "p50": outcome["p50"],
                    "p95": outcome["p95"],
                    "cpu_ms_per_call": {
                        "load_generator": round(cpu["load_generator"] * 1000 / done, 2),
                        "gateway_worker": round(cpu["gateway_worker"] * 1000 / done, 2),
                        "echo_server": round(cpu["echo_server"] * 1000 / done, 2),
                    },
                }
                if outcome["errors"] or outcome["sessions_opened"] < count:
                    results.errors.append(
                        f"closed loop {era}/{count}/{kind}: {outcome['sessions_opened']}/{count} opened, "
                        f"{outcome['errors']} errors, e.g. {outcome['error_samples'][:2]}"
                    )
            direct = row["direct"]["throughput_per_s"]
            for kind in ("execute_tool", "aggregate"):
                row[kind]["throughput_ratio"] = (
                    round(row[kind]["throughput_per_s"] / direct, 2) if direct else None
                )
            runs[f"{era}/{count}"] = row
    assert stack.echo is not None
    results.closed_loop = {
        "calls_per_session": calls,
        "runs": runs,
        "rss_mib": {
            "gateway_worker": round(rss_mib(stack.worker_pid()), 1),
            "echo_server": round(rss_mib(stack.echo.process.pid), 1),
        },
    }


def audit_latencies(path: Path, operation: str, last: int) -> list[float]:
    """The gateway's own time (audit `latency_ms`) of the last `last` lines of `operation`."""
    found = []
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("operation") == operation:
                found.append(record["latency_ms"] / 1000)
    return found[-last:]


async def phase_discovery(stack: Stack, calls: int, results: Results) -> None:
    """list_servers and get_server_tools (cached tool lists): the gateway's own time per call,
    from its audit lines (measured inside the operation), and end to end."""
    log(f"discovery: {calls} list_servers and {calls} get_server_tools calls")
    session = Session(stack.gateway_url, True)
    end_to_end: dict[str, list[float]] = {"list_servers": [], "get_server_tools": []}
    try:
        await session.open()
        for _ in range(calls):
            _, seconds = await session.call("list_servers", {})
            end_to_end["list_servers"].append(seconds)
            result, seconds = await session.call("get_server_tools", {"server": "echo"})
            end_to_end["get_server_tools"].append(seconds)
        if "echo" not in json.dumps(result):
            raise BenchError(f"get_server_tools did not list the echo tool: {json.dumps(result)[:300]}")
    finally:
        await session.close()
    await asyncio.sleep(1.0)  # the audit writer thread flushes behind the calls
    results.discovery = {}
    for name, seconds in end_to_end.items():
        gateway = audit_latencies(stack.work / "audit.jsonl", name, calls)
        if len(gateway) < calls:
            raise BenchError(f"{len(gateway)} audit lines for {calls} {name} calls")
        results.discovery[name] = {"gateway_time": summarize_ms(gateway), "end_to_end": summarize_ms(seconds)}


async def phase_workers(stack: Stack, counts: list[int], calls: int, results: Results) -> None:
    """2026-07-28 closed loop on one Granian worker (the product) and on two; and what
    session-era clients get from two workers without session affinity."""
    child, url = stack.start_workers(2)
    pids = stack.worker_pids(child)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    runs: dict[str, Any] = {}
    try:
        for count in counts:
            log(f"workers: {count} sessions x {calls} calls, 2026-07-28, 1 worker then 2")
            row = {}
            for label, target, listen, workers in (
                ("1", stack.gateway_url, stack.gateway_port, None),
                ("2", url, port, pids),
            ):
                outcome = await run_concurrent(
                    target,
                    True,
                    count,
                    calls,
                    stack,
                    listen,
                    make=lambda target=target: Session(target, True, 120, MODERN),
                    workers=workers,
                )
                stack.check_alive()
                row[label] = {
                    "throughput_per_s": outcome["throughput_per_s"],
                    "p50": outcome["p50"],
                    "p95": outcome["p95"],
                    "errors": outcome["errors"],
                    "gateway_cpu_ms_per_call": round(
                        outcome["cpu_seconds"]["gateway_worker"] * 1000 / max(1, outcome["calls"]), 2
                    ),
                }
                if outcome["errors"]:
                    results.errors.append(
                        f"workers {label}/{count}: {outcome['errors']} errors, e.g. {outcome['error_samples'][:2]}"
                    )
            row["speedup"] = round(row["2"]["throughput_per_s"] / row["1"]["throughput_per_s"], 2)
            runs[str(count)] = row
        # Session-era clients on two workers without affinity: a request on a new connection
        # may reach the worker that does not hold its session.
        legacy = [Session(url, True, 30, PROTOCOL, keepalive=False) for _ in range(8)]
        failed = total = 0
        for session in legacy:
            try:
                await session.open()
                for n in range(4):
                    total += 1
                    try:
                        await session.echo(f"legacy-{n}")
                    except BenchError:
                        failed += 1
            except BenchError:
                total += 1
                failed += 1
            finally:
                await session.close()
    finally:
        child.stop()
        stack.extra.remove(child)
    results.workers = {
        "calls_per_session": calls,
        "runs": runs,
        "session_era_failed": failed,
        "session_era_requests": total,
    }
