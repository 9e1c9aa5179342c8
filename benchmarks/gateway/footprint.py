"""The figures of issue "Performance" the other phases do not give: idle sessions' memory, RSS
over 100,000 calls, start to /ready with slow stdio servers, session lookup in process."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
from timing import clock_overhead_ns

from .common import AGENT, ECHO_SERVER, ERAS, ROOT, BenchError, Results, log, percentile, summarize_ms
from .load import Session
from .stack import Stack, established_connections, free_port, rss_mib, spawn

TARGET_IDLE_BYTES_PER_10K = 100e6  # 10,000 idle sessions: under 100 MB of worker RSS
IDLE_SESSIONS_FULL = 10_000
RSS_CALLS_FULL = (10_000, 100_000)
SDK_SESSION_CAP_GAUGE = "gateway_session_limit"


async def gateway_gauge(base: str, name: str) -> float:
    """One of the gateway's gauges (e.g. gateway_active_sessions), from /metrics?format=json."""
    async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
        summary = (await client.get(f"{base}/metrics?format=json")).json()
    samples = (summary.get(name) or {}).get("samples") or []
    if not samples:
        raise BenchError(f"/metrics has no {name}")
    return float(sum(sample["value"] for sample in samples))


async def phase_idle_sessions(stack: Stack, count: int, connections: int, results: Results) -> None:
    """`count` session-era sessions opened (initialize + notifications/initialized) and held idle
    at once, over `connections` shared keep-alive connections: the worker's RSS before, while
    they are held and after they are deleted, and the gateway's active-sessions gauge."""
    log(f"idle sessions: {count} session-era sessions held at once over {connections} connections")
    base, worker = stack.gateway_base, stack.worker_pid()
    cap = await gateway_gauge(base, SDK_SESSION_CAP_GAUGE)
    active_before = await gateway_gauge(base, "gateway_active_sessions")
    if active_before + count > cap:
        raise BenchError(f"{count} sessions and {active_before:g} already open exceed the cap of {cap:g}")
    await asyncio.sleep(0.5)
    rss_before = rss_mib(worker)
    opened: list[Session] = []
    errors: list[str] = []
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx2.AsyncClient(timeout=120, trust_env=False, limits=limits) as client:
        pending = iter(range(count))

        async def opener() -> None:
            for _ in pending:
                session = Session(stack.gateway_url, True, client=client)
                try:
                    await session.open()
                    opened.append(session)
                except Exception as exc:  # counted; the run fails below
                    errors.append(f"open: {exc!r}"[:300])

        started = time.perf_counter()
        await asyncio.gather(*(opener() for _ in range(connections)))
        open_seconds = time.perf_counter() - started
        stack.check_alive()
        log(f"  opened {len(opened)} sessions in {open_seconds:.1f} s")
        held_connections = established_connections(stack.gateway_port)
        active_held = await gateway_gauge(base, "gateway_active_sessions")
        await asyncio.sleep(1.0)
        rss_held = rss_mib(worker)
        # The gauge counts what the gateway recorded; a ping on a sample shows the SDK still
        # serves those sessions (an unknown session would get 404).
        for session in random.Random(13).sample(opened, min(20, len(opened))):
            message, _ = await session.request("ping", {})
            if "result" not in message:
                errors.append(f"ping on a held session: {json.dumps(message)[:300]}")
        remaining = iter(opened)

        async def closer() -> None:
            for session in remaining:
                try:
                    await session.delete()
                except Exception as exc:
                    errors.append(f"delete: {exc!r}"[:300])

        started = time.perf_counter()
        await asyncio.gather(*(closer() for _ in range(connections)))
        close_seconds = time.perf_counter() - started
    stack.check_alive()
    await asyncio.sleep(1.0)
    active_after = await gateway_gauge(base, "gateway_active_sessions")
    rss_after = rss_mib(worker)
    extra = rss_held - rss_before
    results.idle_sessions = {
        "sessions": count,
        # The figure is for 10,000; fewer (--quick) scale the target with the count.
        "scaled_down_from": IDLE_SESSIONS_FULL if count < IDLE_SESSIONS_FULL else None,
        "opened": len(opened),
        "connections": connections,
        "connections_held": held_connections,
        "open_seconds": round(open_seconds, 1),
        "opened_per_s": round(len(opened) / open_seconds, 1) if open_seconds else None,
        "close_seconds": round(close_seconds, 1),
        "active_sessions_before": active_before,
        "active_sessions_held": active_held,
        "active_sessions_after": active_after,
        "rss_before_mib": round(rss_before, 1),
        "rss_held_mib": round(rss_held, 1),
        "rss_after_close_mib": round(rss_after, 1),
        "extra_mib": round(extra, 1),
        "kib_per_session": round(extra * 1024 / max(1, len(opened)), 2),
        "errors": len(errors),
        "error_samples": errors[:5],
        # What lets this many sessions stay open: the SDK's cap (the gauge above), the idle TTL
        # and the rate limit (initialize is not charged; listed for completeness).
        "settings": {
            "sdk_session_cap": int(cap),
            "GATEWAY_SESSION_TTL": stack.gateway_env.get("GATEWAY_SESSION_TTL", "3600 (default)"),
            "GATEWAY_RATE_LIMIT": stack.gateway_env["GATEWAY_RATE_LIMIT"],
            "GATEWAY_MAX_CONNECTIONS": stack.gateway_env.get("GATEWAY_MAX_CONNECTIONS", "12000 (default)"),
        },
    }
    if errors or len(opened) < count or active_held != active_before + count or active_after != active_before:
        results.errors.append(
            f"idle sessions: {len(opened)}/{count} opened, gauge {active_before:g} -> {active_held:g} -> "
            f"{active_after:g}, {len(errors)} errors, e.g. {errors[:2]}"
        )


def checkpoints(first: int, last: int, steps: int = 9) -> list[int]:
    """`first`, then `steps` even steps to `last` (10k, 20k, ... 100k)."""
    return [first] + [first + round((last - first) * n / steps) for n in range(1, steps + 1)]


async def phase_rss_calls(stack: Stack, first: int, last: int, sessions: int, results: Results) -> None:
    """A sustained closed loop of `sessions` sessions (both eras, half each) calling execute_tool
    back to back: the worker's RSS after `first` calls and at even steps up to `last`."""
    log(f"RSS over calls: {sessions} sessions, closed loop, RSS after {first:,} ... {last:,} calls")
    worker = stack.worker_pid()
    live = [Session(stack.gateway_url, True, 120, ERAS[n % 2]) for n in range(sessions)]
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    done = 0
    rss_start = rss_mib(worker)

    async def caller(index: int, session: Session, queue: Iterator[int], timings: list[float]) -> None:
        for n in queue:
            try:
                timings.append(await session.echo(f"m{index}-{n}"))
            except Exception as exc:  # counted; the run fails below
                errors.append(f"call: {exc!r}"[:300])

    try:
        for session in live:
            await session.open()
        for target in checkpoints(first, last):
            queue = iter(range(done, target))
            timings: list[float] = []
            started = time.perf_counter()
            await asyncio.gather(*(caller(i, s, queue, timings) for i, s in enumerate(live)))
            wall = time.perf_counter() - started
            stack.check_alive()
            done = target
            rss = rss_mib(worker)
            stats = summarize_ms(timings)
            samples.append(
                {
                    "calls": target,
                    "rss_mib": round(rss, 1),
                    "throughput_per_s": round(len(timings) / wall, 1),
                    "p95": stats["p95"],
                }
            )
            log(f"  {target:,} calls: worker RSS {rss:.1f} MiB, {samples[-1]['throughput_per_s']}/s")
            if errors:
                break
    finally:
        for session in live:
            await session.close()
    reference, final = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    results.rss_calls = {
        "sessions": sessions,
        "eras": list(ERAS),
        "first_calls": first,
        "last_calls": last,
        "scaled_down_from": list(RSS_CALLS_FULL) if last < RSS_CALLS_FULL[1] else None,
        "rss_start_mib": round(rss_start, 1),
        "samples": samples,
        "rss_first_mib": reference,
        "rss_last_mib": final,
        "growth_mib": round(final - reference, 1),
        "growth_pct": round(100 * (final - reference) / reference, 1),
        "errors": len(errors),
        "error_samples": errors[:5],
    }
    if errors or samples[-1]["calls"] != last:
        results.errors.append(f"RSS over calls: {len(errors)} errors, e.g. {errors[:2]}")


async def start_to_ready(stack: Stack, label: str, delays: list[float]) -> dict[str, Any]:
    """Start `python -m agent_mcp_gateway` (HTTP) with one stdio echo server per delay, each
    slow to start by that delay; seconds until /ready answers 200 with every server up."""
    folder = stack.work / label
    folder.mkdir(exist_ok=True)
    names = [f"slow{n}" for n in range(len(delays))]
    servers = {
        name: {"command": sys.executable, "args": [str(ECHO_SERVER), "--start-delay", str(delay)]}
        for name, delay in zip(names, delays, strict=True)
    }
    (folder / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    rules = folder / ".mcp-gateway-rules.json"
    rules.write_text(Path(stack.gateway_env["GATEWAY_RULES"]).read_text())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **stack.gateway_env,
        "GATEWAY_MCP_CONFIG": str(folder / ".mcp.json"),
        "GATEWAY_RULES": str(rules),
        "GATEWAY_HTTP_PORT": str(port),
        "GATEWAY_AUDIT_LOG": str(stack.work / f"{label}-audit.jsonl"),
    }
    serving = ready = None
    up_after: dict[str, float] = {}
    started, wall_started = time.monotonic(), time.time()
    child = spawn(label, [sys.executable, "-m", "agent_mcp_gateway"], env, stack.work, stack.work)
    try:
        async with httpx2.AsyncClient(timeout=5, trust_env=False) as client:
            while ready is None:
                elapsed = time.monotonic() - started
                if not child.alive():
                    raise BenchError(f"{label} exited early:\n{child.log_tail()}")
                if elapsed > 120:
                    raise BenchError(
                        f"{label}: /ready not 200 with all servers up in 120 s:\n{child.log_tail()}"
                    )
                try:
                    response = await client.get(f"{base}/ready")
                except httpx2.HTTPError:
                    await asyncio.sleep(0.02)
                    continue
                serving = elapsed if serving is None else serving
                states = response.json().get("servers", {})
                if response.status_code == 200 and all(states.get(n, {}).get("state") == "up" for n in names):
                    ready = elapsed
                    # When each server came up (the gateway's own clock): parallel start-up shows
                    # the delays' differences between them, a serial one their running sum.
                    up_after = {n: round(states[n]["connected_at"] - wall_started, 2) for n in names}
                else:
                    await asyncio.sleep(0.02)
        # Ready must mean usable: one call through each server.
        session = Session(f"{base}/mcp", True, 30)
        try:
            await session.open()
            for name in names:
                session.server = name
                await session.echo(f"{label}-{name}")
        finally:
            await session.close()
    finally:
        child.stop()
    assert serving is not None
    return {"serving_s": round(serving, 2), "ready_s": round(ready, 2), "up_after_s": up_after}


async def phase_startup(stack: Stack, delays: list[float], repeats: int, results: Results) -> None:
    """Start to /ready with one stdio server per delay, against the same servers with no delay,
    alternated `repeats` times: what the delays add, next to the slowest delay and their sum."""
    log(f"startup: {len(delays)} stdio servers slow to start by {delays} s, vs none, {repeats} times each")
    runs: list[dict[str, Any]] = []
    rng = random.Random(17)
    for n in range(repeats):
        order = [("none", [0.0] * len(delays)), ("delays", delays)]
        rng.shuffle(order)
        for kind, values in order:
            run = {"kind": kind, **await start_to_ready(stack, f"startup-{kind}-{n}", values)}
            runs.append(run)
            log(f"  {kind}: serving after {run['serving_s']} s, ready with all up after {run['ready_s']} s")
            stack.check_alive()

    def median(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs if r["kind"] == kind), 2)

    slowest, total = max(delays), sum(delays)
    extra = round(median("delays", "ready_s") - median("none", "ready_s"), 2)
    # First to last server up, in each run. Within one run, so steadier than `extra` across runs
    # (the servers' own start-up is CPU-bound and swings by seconds on a busy machine): started
    # together, the servers come up about as far apart as their delays; one after the other,
    # over at least the sum of all but the shortest delay.
    parallel, serial = round(slowest - min(delays), 2), round(total - min(delays), 2)
    spreads = {
        kind: [
            round(max(r["up_after_s"].values()) - min(r["up_after_s"].values()), 2)
            for r in runs
            if r["kind"] == kind
        ]
        for kind in ("none", "delays")
    }
    results.startup = {
        "servers": len(delays),
        "delays_s": delays,
        "slowest_delay_s": slowest,
        "sum_delays_s": round(total, 2),
        "repeats": repeats,
        "runs": runs,
        "serving_s": median("delays", "serving_s"),
        "ready_no_delay_s": median("none", "ready_s"),
        "ready_with_delays_s": median("delays", "ready_s"),
        "extra_s": extra,
        "up_spread_s": spreads,
        "up_spread_median_s": round(statistics.median(spreads["delays"]), 2),
        "parallel_spread_s": parallel,
        "serial_spread_s": serial,
        "bounded_by": "slowest" if statistics.median(spreads["delays"]) < (parallel + serial) / 2 else "sum",
    }


def phase_session_lookup(count: int, lookups: int, results: Results) -> None:
    """SessionRegistry.get and resolve_agent with `count` sessions, timed call by call."""
    log(f"session lookup: {count} sessions, {lookups} lookups")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
    from agent_mcp_gateway.access.credentials import Principal
    from agent_mcp_gateway.access.identity import resolve_agent
    from agent_mcp_gateway.access.policy import PolicyEngine
    from agent_mcp_gateway.config import RulesConfig
    from agent_mcp_gateway.sessions.registry import SessionRegistry

    registry = SessionRegistry(ttl_seconds=3600)
    ids = [secrets.token_hex(16) for _ in range(count)]
    for sid in ids:
        registry.open(sid).agent_id = AGENT
    engine = PolicyEngine(RulesConfig.model_validate({"agents": {AGENT: {"allow": {"servers": ["*"]}}}}))
    token = Principal(AGENT, "token", "0123456789ab")
    rng = random.Random(11)
    picks = [rng.choice(ids) for _ in range(lookups)]
    clock = time.perf_counter_ns
    overhead = clock_overhead_ns()

    def timed(call: Any) -> list[float]:
        out = []
        gc.disable()
        try:
            for sid in picks:
                start = clock()
                call(sid)
                out.append(max(0, clock() - start - overhead) / 1000)
        finally:
            gc.enable()
        return out

    get = registry.get
    touch = registry.touch
    cases = {
        "SessionRegistry.get": timed(get),
        "SessionRegistry.touch": timed(touch),
        "resolve_agent(session, no agent_id)": timed(
            lambda sid: resolve_agent(engine, None, None, registry.get(sid))
        ),
        "resolve_agent(session, agent_id)": timed(
            lambda sid: resolve_agent(engine, AGENT, None, registry.get(sid))
        ),
        "resolve_agent(session, token)": timed(
            lambda sid: resolve_agent(engine, None, token, registry.get(sid))
        ),
    }
    for sid in picks[:100]:
        if resolve_agent(engine, None, None, registry.get(sid)).agent_id != AGENT:
            raise BenchError("resolve_agent did not return the session's agent")
    results.sessions = {
        "sessions": len(registry),
        "lookups": lookups,
        "timer_overhead_ns": overhead,
        "cases": {
            name: {
                "median_us": round(percentile(values, 0.5), 3),
                "p99_us": round(percentile(values, 0.99), 3),
                "max_us": round(max(values), 1),
            }
            for name, values in cases.items()
        },
    }
