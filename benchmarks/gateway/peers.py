"""The peers phase: this gateway beside other MCP gateways on the same echo server, in one run.

Peers: FastMCP's `create_proxy` (installed with the gateway), the original agent-mcp-gateway
0.2.5 (stdio only, Python 3.12+) and ContextForge (one worker, SQLite, no Redis; with its
defaults and with its stateful sessions). The last two are installed each in its own venv under
the peers directory (`--peers-dir`, env BENCH_PEERS_DIR, default ~/.cache/agent-mcp-gateway-bench/peers),
once; a peer that cannot be installed or started is skipped with its reason, never failing the
run. HTTP paths speak 2025-11-25 (what every HTTP peer serves); the stdio paths compare the
gateway over stdio with the original over stdio, both in front of the stdio echo.

Per path: latency p50/p95 and overhead over the direct path (blocks of calls, the paths rotated
round by round), CPU per call of the proxy's process tree (from /proc), and closed-loop calls/s
against direct.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from .common import AGENT, AGGREGATE_TOKEN, ECHO_SERVER, PROTOCOL, STDIO_SERVER, BenchError, Results, log
from .common import summarize_ms as summarize
from .load import EchoCalls, Session, StdioSession, run_concurrent
from .paths import stdio_env
from .stack import Child, Stack, children_of, cpu_seconds, free_port, spawn, wait_http

ORIGINAL = "agent-mcp-gateway==0.2.5"
CONTEXTFORGE = "mcp-contextforge-gateway==1.0.7.post20260921"
PROXY_SCRIPT = Path(__file__).with_name("fastmcp_proxy.py")
INSTALL_SECONDS = 1800
START_SECONDS = 600  # ContextForge migrates its database at first start: minutes on a busy machine
TARGET_CPU_RATIO = 10.0  # at least 10x less CPU per call than ContextForge's best


def default_peers_dir() -> Path:
    return Path(
        os.environ.get("BENCH_PEERS_DIR") or Path.home() / ".cache" / "agent-mcp-gateway-bench" / "peers"
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and every process below it that is still running."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
            todo += children_of(current)
    return total


def python_312() -> str | None:
    """An interpreter of Python 3.12 or later (the original 0.2.5 requires it), if there is one."""
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.1[2-9]*/bin/python3"), reverse=True)]
    for candidate in filter(None, candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.stdout.strip() == "True":
                return candidate
    return None


def peer_venv(root: Path, name: str, requirement: str, python: str | None, install: bool) -> Path | str:
    """The venv holding `requirement` (installed into it unless `install` is off), or why not."""
    venv = root / name
    package, version = requirement.split("==")
    check = [
        str(venv / "bin" / "python"),
        "-c",
        f"import importlib.metadata as m; print(m.version({package!r}))",
    ]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run(check, capture_output=True, text=True, timeout=120).stdout.strip() == version:
            return venv
    if not install:
        return f"{requirement} is not installed in {venv} (--no-peer-install)"
    if python is None:
        return f"{requirement} needs Python 3.12 or later, and none was found (--peer-python)"
    log(f"peers: installing {requirement} into {venv} (once)")
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", requirement],
            capture_output=True,
            text=True,
            timeout=INSTALL_SECONDS,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{requirement} could not be installed: {exc!r}"[:300]
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or [
            done.stderr[-300:]
        ]
        return f"{requirement} could not be installed: {errors[-1]}"[:300]
    return venv


class LooseStdio(StdioSession):
    """The original gateway wants `agent_id` in every call and answers `execute_tool` with the
    downstream result as a JSON object: the echoed text must be in it."""

    async def echo(self, text: str) -> float:
        result, elapsed = await self.call(
            "execute_tool", {"agent_id": AGENT, "server": self.server, "tool": "echo", "args": {"text": text}}
        )
        if text not in json.dumps(result):
            raise BenchError(f"the original gateway answered {json.dumps(result)[:200]} for {text!r}")
        return elapsed


@dataclass
class Route:
    """One path of the phase: its client, the direct path it is measured against, the process
    whose CPU it costs (with the processes below it when `tree`: a Granian worker, uvicorn's), and
    how to open more clients for the closed loop (HTTP only)."""

    client: EchoCalls
    direct: str
    pid: Callable[[], int]
    make: Callable[[], Session] | None = None
    url: str = ""
    port: int = 0
    tree: bool = True  # False for a gateway over stdio, whose children are its downstream servers
    times: list[float] = field(default_factory=list)
    cpu: float = 0.0
    calls: int = 0


@dataclass
class ContextForge:
    """A started ContextForge: its virtual server's MCP endpoint and an admin token."""

    url: str
    port: int
    token: str


def start_contextforge(
    stack: Stack, venv: Path, stateful: bool, secret: str
) -> tuple[Child, int, dict[str, str]]:
    """Start ContextForge (uvicorn, one worker) on a fresh SQLite database."""
    port = free_port()
    name = f"contextforge-{'stateful' if stateful else 'default'}"
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(Path.home()),
        "JWT_SECRET_KEY": secret,
        "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(40),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "PLATFORM_ADMIN_PASSWORD": "Bench-" + secrets.token_urlsafe(16),
        "BASIC_AUTH_PASSWORD": "Bench-" + secrets.token_urlsafe(16),
        "DATABASE_URL": f"sqlite:///{stack.work / name}.db",
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",
        # the echo server is on loopback, which its SSRF guard refuses by default
        "SSRF_ALLOW_LOCALHOST": "true",
        "SSRF_ALLOW_PRIVATE_NETWORKS": "true",
        # its default of 100 tool calls a minute would make the benchmark measure the limiter
        "RATE_LIMITING_ENABLED": "false",
        "USE_STATEFUL_SESSIONS": "true" if stateful else "false",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    command = [str(venv / "bin" / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return spawn(name, command, env, stack.work, stack.work), port, env


def register_contextforge(
    stack: Stack, child: Child, port: int, env: dict[str, str], venv: Path
) -> ContextForge:
    """A token (its own CLI), the echo server registered, a virtual server with its echo tool."""
    base = f"http://127.0.0.1:{port}"
    wait_http(child, f"{base}/health", START_SECONDS, ok=(200,))
    made = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "mcpgateway.utils.create_jwt_token", "--username", "admin@example.com",
         "--admin", "--full-name", "Bench", "--exp", "600", "--secret", env["JWT_SECRET_KEY"]],
        env=env, capture_output=True, text=True, timeout=300, cwd=stack.work,
    )  # fmt: skip
    token = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    if not token.count(".") == 2:
        raise BenchError(f"{child.name}: no token from create_jwt_token: {made.stderr[-300:]}")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(base_url=base, headers=headers, timeout=300, trust_env=False) as client:
        added = client.post(
            "/gateways", json={"name": "echo", "url": stack.echo_url, "transport": "STREAMABLEHTTP"}
        )
        if added.status_code >= 300:
            raise BenchError(f"{child.name}: POST /gateways: HTTP {added.status_code} {added.text[:300]}")
        tools = client.get("/tools", params={"limit": 100}).json()
        ids = [t["id"] for t in tools if t.get("name") == "echo-echo"]
        if not ids:
            raise BenchError(f"{child.name}: no echo-echo tool among {[t.get('name') for t in tools]}")
        server = client.post("/servers", json={"server": {"name": "bench", "associated_tools": ids}})
        if server.status_code >= 300:
            raise BenchError(f"{child.name}: POST /servers: HTTP {server.status_code} {server.text[:300]}")
        server_id = server.json()["id"]
    return ContextForge(f"{base}/servers/{server_id}/mcp", port, token)


def version_of(venv: Path, package: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        code = f"import importlib.metadata as m; print(m.version({package!r}))"
        return subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120
        ).stdout.strip()
    return "?"


async def phase_peers(
    stack: Stack,
    calls: int,
    block: int,
    loop_sessions: int,
    loop_calls: int,
    root: Path,
    install: bool,
    peer_python: str | None,
    results: Results,
) -> None:
    assert stack.echo is not None and stack.gateway is not None
    skipped: dict[str, str] = {}
    versions = {
        "agent-mcp-gateway (this tree)": importlib.metadata.version("agent-mcp-gateway"),
        "fastmcp": importlib.metadata.version("fastmcp"),
        "mcp": importlib.metadata.version("mcp"),
    }
    root.mkdir(parents=True, exist_ok=True)
    original = peer_venv(root, "original", ORIGINAL, peer_python or python_312(), install)
    contextforge = peer_venv(root, "contextforge", CONTEXTFORGE, sys.executable, install)
    started: list[Child] = []
    echo_pid, gateway_pid = stack.echo.process.pid, stack.gateway.process.pid
    direct_stdio = StdioSession(
        [sys.executable, str(ECHO_SERVER)], stack.gateway_env, stack.work / "peer-direct.log", False, ""
    )
    paths: dict[str, Route] = {
        "direct/http": Route(
            Session(stack.echo_url, False), "", lambda: echo_pid,
            lambda: Session(stack.echo_url, False, 120), stack.echo_url, stack.echo_port,
        ),
        "direct/stdio": Route(direct_stdio, "", lambda: direct_stdio.pid),
        "this gateway, discovery (execute_tool)": Route(
            Session(stack.gateway_url, True), "direct/http", lambda: gateway_pid,
            lambda: Session(stack.gateway_url, True, 120), stack.gateway_url, stack.gateway_port,
        ),
        "this gateway, aggregate (echo__echo)": Route(
            Session(stack.gateway_url, True, tool="echo__echo", token=AGGREGATE_TOKEN), "direct/http",
            lambda: gateway_pid,
            lambda: Session(stack.gateway_url, True, 120, tool="echo__echo", token=AGGREGATE_TOKEN),
            stack.gateway_url, stack.gateway_port,
        ),
    }  # fmt: skip
    try:
        # ContextForge is slow to start (database migrations): both instances start first, in parallel.
        pending: dict[str, tuple[Child, int, dict[str, str]]] = {}
        if isinstance(contextforge, Path):
            versions["mcp-contextforge-gateway"] = version_of(contextforge, "mcp-contextforge-gateway")
            secret = secrets.token_urlsafe(48)
            for label, stateful in (
                ("ContextForge, defaults (stateless)", False),
                ("ContextForge, stateful sessions", True),
            ):
                try:
                    pending[label] = start_contextforge(stack, contextforge, stateful, secret)
                    started.append(pending[label][0])
                except OSError as exc:
                    skipped[label] = f"could not start: {exc!r}"
        else:
            skipped["ContextForge"] = contextforge

        proxy_port = free_port()
        proxy = spawn(
            "fastmcp-proxy", [sys.executable, str(PROXY_SCRIPT), stack.echo_url, str(proxy_port)],
            {**stack.gateway_env}, stack.work, stack.work,
        )  # fmt: skip
        started.append(proxy)
        proxy_url = f"http://127.0.0.1:{proxy_port}/mcp"
        try:
            wait_http(proxy, proxy_url, 120)
            paths["FastMCP create_proxy"] = Route(
                Session(proxy_url, False), "direct/http", lambda: proxy.process.pid,
                lambda: Session(proxy_url, False, 120), proxy_url, proxy_port,
            )  # fmt: skip
        except BenchError as exc:
            skipped["FastMCP create_proxy"] = str(exc)[:300]

        env = stdio_env(stack)
        ours = StdioSession(
            [sys.executable, "-m", "agent_mcp_gateway"],
            env,
            stack.work / "peer-stdio-gw.log",
            True,
            STDIO_SERVER,
        )
        paths["this gateway over stdio (execute_tool)"] = Route(
            ours, "direct/stdio", lambda: ours.pid, tree=False
        )
        if isinstance(original, Path):
            versions["agent-mcp-gateway (original)"] = version_of(original, "agent-mcp-gateway")
            config = stack.work / "original"
            config.mkdir(exist_ok=True)
            (config / "mcp.json").write_text(json.dumps({"mcpServers": {STDIO_SERVER: {
                "command": sys.executable, "args": [str(ECHO_SERVER)]}}}))  # fmt: skip
            (config / "rules.json").write_text(json.dumps({"agents": {AGENT: {"allow": {"servers": ["*"]}}}}))
            original_env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(Path.home()),
                "GATEWAY_MCP_CONFIG": str(config / "mcp.json"),
                "GATEWAY_RULES": str(config / "rules.json"),
                "GATEWAY_AUDIT_LOG": str(stack.work / "original-audit.jsonl"),
                "GATEWAY_DEFAULT_AGENT": AGENT,
            }
            theirs = LooseStdio(
                [str(original / "bin" / "agent-mcp-gateway")],
                original_env,
                stack.work / "original.log",
                True,
                STDIO_SERVER,
            )
            paths["original agent-mcp-gateway 0.2.5 over stdio"] = Route(
                theirs, "direct/stdio", lambda: theirs.pid, tree=False
            )
        else:
            skipped["original agent-mcp-gateway 0.2.5"] = original

        for label, (child, port, cf_env) in pending.items():
            log(f"peers: waiting for {label} to start (its first start migrates a database)")
            try:
                forge = register_contextforge(stack, child, port, cf_env, contextforge)
            except (
                BenchError,
                OSError,
                httpx2.HTTPError,
                ValueError,
                KeyError,
                subprocess.SubprocessError,
            ) as exc:
                skipped[label] = f"could not be set up: {exc}"[:400]
                child.stop()
                continue
            paths[label] = Route(
                Session(forge.url, True, token=forge.token, tool="echo-echo", session_required=False),
                "direct/http", lambda child=child: child.process.pid,
                lambda forge=forge: Session(forge.url, True, 120, tool="echo-echo", token=forge.token, session_required=False),
                forge.url, forge.port,
            )  # fmt: skip

        await measure(paths, calls, block, skipped)
        loops = await closed_loops(stack, paths, loop_sessions, loop_calls, results)
    finally:
        for path in paths.values():
            with contextlib.suppress(Exception):
                await path.client.close()
        for child in started:
            child.stop()
    results.peers = report(paths, loops, skipped, versions, calls, loop_sessions, loop_calls)
    for line in table(results.peers):
        log(line)  # also in the report of a full run


OWN = ("direct/", "this gateway")  # paths whose failure invalidates the run; a peer's is skipped


async def measure(paths: dict[str, Route], calls: int, block: int, skipped: dict[str, str]) -> None:
    """Blocks of `block` calls per path, the paths rotated each round; CPU per block from /proc."""
    for name, path in list(paths.items()):
        try:
            await path.client.open()
            for n in range(10):
                await path.client.echo(f"warm-{n}")
        except Exception as exc:
            if name.startswith(OWN):
                raise BenchError(f"peers: {name} failed to warm up: {exc!r}"[:400]) from exc
            skipped[name] = f"failed to warm up: {exc!r}"[:400]
            with contextlib.suppress(Exception):
                await path.client.close()
            del paths[name]
    log(f"peers: {len(paths)} paths x {calls} sequential calls, in blocks of {block}, rotated")
    names = list(paths)
    for number in range(max(1, calls // block)):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            path = paths[name]
            pid, cpu = path.pid(), tree_cpu if path.tree else cpu_seconds
            before = cpu(pid)
            for n in range(block):
                path.times.append(await path.client.echo(f"b{number}-{n}"))
            path.cpu += cpu(pid) - before
            path.calls += block


async def closed_loops(
    stack: Stack, paths: dict[str, Route], sessions: int, calls: int, results: Results
) -> dict[str, dict[str, Any]]:
    loops: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        if path.make is None:
            continue
        log(f"peers: closed loop, {sessions} sessions x {calls} calls: {name}")
        outcome = await run_concurrent(
            path.url, True, sessions, calls, stack, path.port, make=path.make, workers=[path.pid()]
        )
        loops[name] = {
            "throughput_per_s": outcome["throughput_per_s"],
            "p50": outcome["p50"],
            "errors": outcome["errors"],
        }
        if outcome["errors"] or outcome["sessions_opened"] < sessions:
            results.errors.append(
                f"peers closed loop {name}: {outcome['sessions_opened']}/{sessions} opened, "
                f"{outcome['errors']} errors, e.g. {outcome['error_samples'][:2]}"
            )
    return loops


def report(
    paths: dict[str, Route],
    loops: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    versions: dict[str, str],
    calls: int,
    sessions: int,
    loop_calls: int,
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, path in paths.items():
        stats = summarize(path.times)
        row: dict[str, Any] = {"p50_ms": stats["p50"], "p95_ms": stats["p95"], "calls": stats["count"]}
        row["cpu_ms_per_call"] = round(path.cpu * 1000 / path.calls, 2) if path.calls else None
        if path.direct:
            direct = rows[path.direct]
            row["vs"] = path.direct
            row["overhead_p50_ms"] = round(stats["p50"] - direct["p50_ms"], 2)
            row["overhead_p95_ms"] = round(stats["p95"] - direct["p95_ms"], 2)
        if name in loops:
            row["closed_loop_per_s"] = loops[name]["throughput_per_s"]
            base = loops.get("direct/http", {}).get("throughput_per_s")
            row["closed_loop_vs_direct"] = round(loops[name]["throughput_per_s"] / base, 2) if base else None
        rows[name] = row
    ours = [r["cpu_ms_per_call"] for n, r in rows.items() if n.startswith("this gateway,")]
    forge = [r["cpu_ms_per_call"] for n, r in rows.items() if n.startswith("ContextForge")]
    target: dict[str, Any] = {
        "wanted": f">= {TARGET_CPU_RATIO:g}x less CPU per call than ContextForge's best"
    }
    if ours and forge and min(ours) > 0:
        ratio = min(forge) / max(ours)
        target.update({"ratio": round(ratio, 1), "met": ratio >= TARGET_CPU_RATIO})
    else:
        target["met"] = None  # ContextForge skipped (or CPU below the clock tick): not measured
    return {
        "calls": calls,
        "closed_loop": {"sessions": sessions, "calls_per_session": loop_calls},
        "protocol": PROTOCOL,
        "versions": versions,
        "paths": rows,
        "skipped": skipped,
        "cpu_target": target,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def table(peers: dict[str, Any]) -> list[str]:
    lines = [
        "peers: path | p50 / p95 ms | overhead p50 / p95 ms | CPU ms/call | closed loop calls/s (vs direct)"
    ]
    for name, row in peers["paths"].items():
        overhead = f"{row['overhead_p50_ms']} / {row['overhead_p95_ms']}" if "vs" in row else "-"
        loop = (
            f"{row['closed_loop_per_s']} (x{row['closed_loop_vs_direct']})"
            if "closed_loop_per_s" in row
            else "-"
        )
        lines.append(
            f"  {name} | {row['p50_ms']} / {row['p95_ms']} | {overhead} | {row['cpu_ms_per_call']} | {loop}"
        )
    for name, reason in peers["skipped"].items():
        lines.append(f"  skipped {name}: {reason}")
    lines.append(f"  CPU target: {peers['cpu_target']}")
    return lines
