"""End-to-end benchmark of the HTTP gateway against the milestone targets.

Starts, as real subprocesses on free loopback ports, the echo fixture server over Streamable
HTTP and the gateway over HTTP (Granian) in front of it, then measures in the same run:

  latency      tools/call `echo` on the downstream directly vs `execute_tool` through the
               gateway, alternated call by call so machine noise hits both paths alike;
  concurrency  N sessions (default 120) held open at once, all calling at the same time,
               through the gateway and, for comparison, directly;
  sessions     SessionRegistry.get and resolve_agent with 10,000 sessions, in process;
  memory       the gateway worker's RSS over several rounds of sustained load;
  idle         10,000 idle session-era sessions held at once: the worker's RSS;
  rss-calls    the worker's RSS from 10,000 to 100,000 calls of a sustained closed loop;
  startup      start to /ready with 5 stdio servers, each slow to start by a known delay;
  peers        beside FastMCP's create_proxy, the original 0.2.5 (stdio) and ContextForge on
               the same echo server (peers installed in their own venvs, skipped if they
               cannot be: see peers.py).

The load generator is raw JSON-RPC over httpx2 (the HTTP client the MCP SDK itself uses): a
legacy `initialize` + `notifications/initialized` per session, then `tools/call` POSTs with
`Accept: application/json, text/event-stream`, SSE answers parsed to the JSON-RPC response.
Absolute times drift on a shared machine; compare the ratios and overheads.

    python benchmarks/bench_gateway.py            # 5+ minutes, plus 100,000 calls for the RSS run
    python benchmarks/bench_gateway.py --quick    # 2+ minutes, plus 10,000 calls
    python benchmarks/bench_gateway.py --json     # the summary as JSON

Exit status: 0 when every phase ran without errors (a missed target is reported as MISS,
not as a failure); 1 when a call failed or something could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import BenchError, Results, log
from .footprint import (
    IDLE_SESSIONS_FULL,
    RSS_CALLS_FULL,
    phase_idle_sessions,
    phase_rss_calls,
    phase_session_lookup,
    phase_startup,
)
from .paths import phase_closed_loop, phase_discovery, phase_paths, phase_workers
from .peers import default_peers_dir, phase_peers
from .phases import phase_compare, phase_concurrency, phase_latency, phase_memory
from .report import judge, render
from .stack import Stack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--latency-calls", type=int, help="sequential calls per path (default 1000; quick 150)"
    )
    parser.add_argument("--sessions", type=int, default=120, help="sessions held at once (default 120)")
    parser.add_argument(
        "--calls-per-session", type=int, help="back-to-back calls per session (default 10; quick 2)"
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        help="calls/s of the paced run (default: 40 %% of the gateway's saturated throughput)",
    )
    parser.add_argument("--paced-seconds", type=float, help="length of each paced run (default 10; quick 3)")
    parser.add_argument("--rounds", type=int, help="sustained-load rounds (default 5; quick 3)")
    parser.add_argument("--round-calls", type=int, help="gateway calls per round (default 1500; quick 200)")
    parser.add_argument(
        "--round-sessions", type=int, default=16, help="concurrent sessions per round (default 16)"
    )
    parser.add_argument("--lookup-sessions", type=int, default=10_000, help="sessions for the lookup timing")
    parser.add_argument(
        "--path-calls",
        type=int,
        help="sequential calls per path, eras x transports x views (default 300; quick 60)",
    )
    parser.add_argument(
        "--loop-sessions", default="16,64", help="closed-loop session counts, comma-separated (default 16,64)"
    )
    parser.add_argument("--loop-calls", type=int, help="closed-loop calls per session (default 20; quick 5)")
    parser.add_argument(
        "--discovery-calls", type=int, help="list_servers and get_server_tools calls (default 200; quick 50)"
    )
    parser.add_argument(
        "--idle-sessions", type=int, help="session-era sessions held idle at once (default 10000; quick 1000)"
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=8,
        help="keep-alive connections they are opened over (default 8)",
    )
    parser.add_argument(
        "--rss-calls",
        help="RSS after FIRST and, in steps, after LAST calls: FIRST,LAST (default 10000,100000; quick 1000,10000)",
    )
    parser.add_argument(
        "--rss-sessions", type=int, default=16, help="closed-loop sessions of the RSS run (default 16)"
    )
    parser.add_argument(
        "--start-delays",
        default="0.5,0.75,1.0,1.25,1.5",
        help="start-up delays (s) of the stdio servers of the startup phase, one server each",
    )
    parser.add_argument(
        "--start-repeats", type=int, help="startup runs with and without the delays (default 3; quick 1)"
    )
    parser.add_argument("--log-level", default="INFO", help="the gateway's GATEWAY_LOG_LEVEL (default INFO)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, audit)")
    parser.add_argument(
        "--latency-only", action="store_true", help="run the latency phase only (e.g. to profile it)"
    )
    parser.add_argument(
        "--only",
        choices=PHASES,
        help="run this phase alone and print it as JSON (e.g. closed-loop while py-spy records the worker)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the `app` directory of another checkout: its gateway is a third latency path (before/after)",
    )
    parser.add_argument(
        "--compare-calls", type=int, default=100, help="requests per block of the compare phase (default 100)"
    )
    parser.add_argument(
        "--compare-rounds",
        type=int,
        default=6,
        help="blocks per kind and checkout in the compare phase (default 6)",
    )
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=default_peers_dir(),
        help="where the peers' venvs are installed (default: env BENCH_PEERS_DIR or "
        "~/.cache/agent-mcp-gateway-bench/peers)",
    )
    parser.add_argument(
        "--no-peer-install", action="store_true", help="use peers already installed; skip the others"
    )
    parser.add_argument(
        "--peer-python", help="a Python 3.12+ for the original 0.2.5 (default: found on PATH or pyenv)"
    )
    parser.add_argument(
        "--peer-calls", type=int, help="sequential calls per peer path (default 300; quick 60)"
    )
    parser.add_argument(
        "--peer-block", type=int, default=20, help="calls per block of the peers phase (default 20)"
    )
    parser.add_argument(
        "--peer-loop-sessions", type=int, default=16, help="closed-loop sessions per peer (default 16)"
    )
    parser.add_argument(
        "--peer-loop-calls", type=int, help="closed-loop calls per session (default 20; quick 5)"
    )
    options = parser.parse_args(argv)
    quick = options.quick
    defaults = {
        "latency_calls": (1000, 150),
        "calls_per_session": (10, 2),
        "paced_seconds": (10.0, 3.0),
        "rounds": (5, 3),
        "round_calls": (1500, 200),
        "path_calls": (300, 60),
        "loop_calls": (20, 5),
        "discovery_calls": (200, 50),
        "idle_sessions": (IDLE_SESSIONS_FULL, 1_000),
        "rss_calls": (",".join(map(str, RSS_CALLS_FULL)), "1000,10000"),
        "start_repeats": (3, 1),
        "peer_calls": (300, 60),
        "peer_loop_calls": (20, 5),
    }
    for name, (full, short) in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, short if quick else full)
    if options.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is warm-up)")
    try:
        options.loop_sessions = [int(n) for n in options.loop_sessions.split(",") if n.strip()]
    except ValueError:
        parser.error("--loop-sessions takes comma-separated numbers, e.g. 16,64")
    try:
        first, last = (int(n) for n in options.rss_calls.split(","))
    except ValueError:
        parser.error("--rss-calls takes FIRST,LAST, e.g. 10000,100000")
    if not 0 < first < last:
        parser.error("--rss-calls needs 0 < FIRST < LAST")
    options.rss_calls = [first, last]
    try:
        options.start_delays = [float(n) for n in options.start_delays.split(",") if n.strip()]
    except ValueError:
        parser.error("--start-delays takes comma-separated seconds, e.g. 0.5,1,1.5")
    if not options.start_delays or min(options.start_delays) < 0:
        parser.error("--start-delays needs at least one delay, none negative")
    if options.idle_sessions < 1 or options.idle_connections < 1 or options.start_repeats < 1:
        parser.error("--idle-sessions, --idle-connections and --start-repeats must be at least 1")
    return options


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the subprocesses are stopped either way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


PHASES = (
    "latency",
    "paths",
    "closed-loop",
    "discovery",
    "workers",
    "idle-sessions",
    "rss-calls",
    "startup",
    "compare",
    "peers",
)


async def run_phases(stack: Stack, options: argparse.Namespace, results: Results) -> None:
    only = options.only
    if only is not None:
        phase = {
            "latency": lambda: phase_latency(
                stack, options.latency_calls, min(50, options.latency_calls), results
            ),
            "paths": lambda: phase_paths(stack, options.path_calls, min(20, options.path_calls), results),
            "closed-loop": lambda: phase_closed_loop(
                stack, options.loop_sessions, options.loop_calls, results
            ),
            "discovery": lambda: phase_discovery(stack, options.discovery_calls, results),
            "workers": lambda: phase_workers(stack, options.loop_sessions, options.loop_calls, results),
            "idle-sessions": lambda: phase_idle_sessions(
                stack, options.idle_sessions, options.idle_connections, results
            ),
            "rss-calls": lambda: phase_rss_calls(stack, *options.rss_calls, options.rss_sessions, results),
            "startup": lambda: phase_startup(stack, options.start_delays, options.start_repeats, results),
            "compare": lambda: phase_compare(stack, options.compare_calls, options.compare_rounds, results),
            "peers": lambda: peers(stack, options, results),
        }[only]
        await phase()
        return
    await phase_latency(stack, options.latency_calls, warmup=min(50, options.latency_calls), results=results)
    stack.check_alive()
    if options.latency_only:
        return
    await phase_concurrency(
        stack, options.sessions, options.calls_per_session, options.paced_rate, options.paced_seconds, results
    )
    await phase_memory(stack, options.rounds, options.round_calls, options.round_sessions, results)
    await phase_idle_sessions(stack, options.idle_sessions, options.idle_connections, results)
    stack.check_alive()
    await phase_rss_calls(stack, *options.rss_calls, options.rss_sessions, results)
    await phase_paths(stack, options.path_calls, min(20, options.path_calls), results)
    stack.check_alive()
    await phase_closed_loop(stack, options.loop_sessions, options.loop_calls, results)
    await phase_discovery(stack, options.discovery_calls, results)
    await phase_workers(stack, options.loop_sessions, options.loop_calls, results)
    await phase_startup(stack, options.start_delays, options.start_repeats, results)
    await peers(stack, options, results)


async def peers(stack: Stack, options: argparse.Namespace, results: Results) -> None:
    await phase_peers(
        stack,
        options.peer_calls,
        min(options.peer_block, options.peer_calls),
        options.peer_loop_sessions,
        options.peer_loop_calls,
        options.peers_dir,
        not options.no_peer_install,
        options.peer_python,
        results,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    results = Results()
    results.config = {
        "mode": "quick" if options.quick else "full",
        "cpus": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "options": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(options).items()
            if k not in ("json", "keep")
        },
    }
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    stack = Stack(work)
    stack.baseline_source = options.baseline
    status = 0
    with terminate_as_interrupt():
        try:
            log(f"starting the echo server and the gateway (working directory {work})")
            stack.start(options.log_level)
            asyncio.run(run_phases(stack, options, results))
            if not options.latency_only and options.only is None:
                phase_session_lookup(options.lookup_sessions, 20_000 if options.quick else 100_000, results)
            log("done")
        except KeyboardInterrupt:
            log("interrupted; stopping the subprocesses")
            status = 130
        except BenchError as exc:
            log(f"benchmark failed: {exc}")
            status = 1
        except Exception:
            log(f"benchmark failed:\n{traceback.format_exc()}")
            status = 1
        finally:
            stack.stop()
    if status:
        log(f"the subprocesses' logs are kept in {work}")
        return status
    results.config["load_after"] = round(os.getloadavg()[0], 2)
    results.config["seconds"] = round(time.monotonic() - started, 1)
    if options.only is not None:
        phase = options.only.replace("-", "_")
        print(
            json.dumps(
                {"config": results.config, phase: getattr(results, phase), "errors": results.errors}, indent=2
            )
        )
    elif options.latency_only:
        print(json.dumps({"config": results.config, "latency": results.latency}, indent=2))
    else:
        judge(results)
        print(json.dumps(results.__dict__, indent=2) if options.json else render(results))
    if options.keep:
        log(f"working directory kept: {work}")
    else:
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        work.rmdir()
    return 1 if results.errors else 0
