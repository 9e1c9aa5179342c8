"""The processes under test: subprocesses in their own process groups, /proc readings (CPU,
RSS, TCP sockets), and `Stack`, which starts the echo fixture and the gateways in front of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from .common import (
    AGENT,
    AGGREGATE_AGENT,
    AGGREGATE_TOKEN,
    CLK_TCK,
    ECHO_SERVER,
    PAGE_KIB,
    ROOT,
    STDIO_SERVER,
    TOKEN,
    BenchError,
)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    """A subprocess in its own process group, so stopping it ends everything it started."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # The group may outlive its leader (a Granian worker); make sure nothing is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def spawn(name: str, args: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Child(name, process, log_path)


def wait_http(child: Child, url: str, timeout: float, ok: tuple[int, ...] | None = None) -> None:
    """Wait until `url` answers (with one of `ok` statuses when given)."""
    deadline = time.monotonic() + timeout
    with httpx2.Client(timeout=2, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not child.alive():
                raise BenchError(f"{child.name} exited early:\n{child.log_tail()}")
            try:
                response = client.get(url)
                if ok is None or response.status_code in ok:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
    raise BenchError(f"{child.name} did not answer {url} within {timeout:.0f} s:\n{child.log_tail()}")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_KIB / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tcp_sockets(state: str, local_port: int | None = None, remote_port: int | None = None) -> int:
    """Loopback TCP sockets in `state` (hex code from /proc/net/tcp) with the given ports."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                if parts[3] != state:
                    continue
                if local_port is not None and int(parts[1].rsplit(":", 1)[1], 16) != local_port:
                    continue
                if remote_port is not None and int(parts[2].rsplit(":", 1)[1], 16) != remote_port:
                    continue
                count += 1
    return count


def established_connections(port: int) -> int:
    """ESTABLISHED TCP connections on the server side of `port`."""
    return _tcp_sockets("01", local_port=port)


def closed_client_connections(port: int) -> int:
    """TIME_WAIT sockets of clients that connected to `port` and closed first (kept ~60 s)."""
    return _tcp_sockets("06", remote_port=port)


@dataclass
class Stack:
    """The downstream echo server and the gateway in front of it."""

    work: Path
    echo: Child | None = None
    gateway: Child | None = None
    echo_url: str = ""
    gateway_base: str = ""
    gateway_port: int = 0
    echo_port: int = 0
    baseline_source: Path | None = None  # another checkout's `app` directory, run beside
    baseline: Child | None = None
    baseline_url: str = ""
    gateway_env: dict[str, str] = field(default_factory=dict)
    extra: list[Child] = field(default_factory=list)  # gateways started by a phase (workers=2)

    @property
    def gateway_url(self) -> str:
        return f"{self.gateway_base}/mcp"

    def worker_pid(self, child: Child | None = None) -> int:
        """The Granian worker (a child of `python -m agent_mcp_gateway`), which serves the requests."""
        child = child or self.gateway
        assert child is not None
        kids = children_of(child.process.pid)
        if not kids:
            raise BenchError("cannot find the gateway's Granian worker process")
        return kids[0]

    def start(self, log_level: str) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        self.echo_port = free_port()
        self.echo_url = f"http://127.0.0.1:{self.echo_port}/mcp"
        self.echo = spawn(
            "echo",
            [sys.executable, str(ECHO_SERVER), "--http", str(self.echo_port)],
            env,
            self.work,
            self.work,
        )
        wait_http(self.echo, self.echo_url, 60)

        # The configuration in its own folder, as deployed: the gateway watches that folder, and
        # the logs and audit lines written beside it would be changes to look at.
        config_dir = self.work / "config"
        config_dir.mkdir(exist_ok=True)
        mcp_config = config_dir / ".mcp.json"
        rules = config_dir / ".mcp-gateway-rules.json"
        mcp_config.write_text(
            json.dumps(
                {
                    "mcpServers": {
                        "echo": {"description": "echo fixture over HTTP", "url": self.echo_url},
                        STDIO_SERVER: {
                            "description": "echo fixture over stdio",
                            "command": sys.executable,
                            "args": [str(ECHO_SERVER)],
                        },
                    }
                }
            )
        )
        rules.write_text(
            json.dumps(
                {
                    "agents": {
                        AGENT: {"allow": {"servers": ["*"]}, "tokens": [token_hash(TOKEN)]},
                        AGGREGATE_AGENT: {
                            "allow": {"servers": ["*"]},
                            "tokens": [token_hash(AGGREGATE_TOKEN)],
                            "view": "aggregate",
                        },
                    }
                }
            )
        )
        gateway_env = {
            **env,
            "GATEWAY_TRANSPORT": "http",
            "GATEWAY_MCP_CONFIG": str(mcp_config),
            "GATEWAY_RULES": str(rules),
            "GATEWAY_RATE_LIMIT": "1000000/minute",
            "GATEWAY_LOG_LEVEL": log_level,
        }
        self.gateway_env = gateway_env
        self.gateway_port = free_port()
        self.gateway_base = f"http://127.0.0.1:{self.gateway_port}"
        self.gateway = self._start_gateway("gateway", self.gateway_port, gateway_env)
        if self.baseline_source is not None:
            port = free_port()
            self.baseline_url = f"http://127.0.0.1:{port}/mcp"
            baseline_env = {
                **gateway_env,
                "PYTHONPATH": os.pathsep.join([str(self.baseline_source), env["PYTHONPATH"]]),
            }
            self.baseline = self._start_gateway("baseline", port, baseline_env)

    def _start_gateway(self, name: str, port: int, env: dict[str, str]) -> Child:
        audit = "audit.jsonl" if name == "gateway" else f"{name}-audit.jsonl"
        env = {**env, "GATEWAY_HTTP_PORT": str(port), "GATEWAY_AUDIT_LOG": str(self.work / audit)}
        child = spawn(name, [sys.executable, "-m", "agent_mcp_gateway"], env, self.work, self.work)
        try:
            self._wait_ready(child, f"http://127.0.0.1:{port}")
        except BaseException:
            child.stop()  # not tracked yet: stop it here, or it outlives the run
            raise
        return child

    def _wait_ready(self, child: Child, base: str) -> None:
        wait_http(child, f"{base}/ready", 90, ok=(200,))
        # With several workers each answers /ready for itself: ask until one answer, from
        # whichever worker, shows both downstreams up, and a few more times after that.
        deadline, up_in_a_row = time.monotonic() + 90, 0
        while up_in_a_row < 4:
            ready = httpx2.get(f"{base}/ready", trust_env=False, headers={"Connection": "close"}).json()
            servers = ready.get("servers", {})
            up = all(servers.get(s, {}).get("state") == "up" for s in ("echo", STDIO_SERVER))
            up_in_a_row = up_in_a_row + 1 if up else 0
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} is ready but its downstream servers are not up: {ready}")
            if not up:
                time.sleep(0.2)

    def start_workers(self, workers: int) -> tuple[Child, str]:
        """A second gateway served by `workers` Granian workers (`GATEWAY_WORKERS`), started as
        the product starts, with the same settings."""
        port = free_port()
        env = {**self.gateway_env, "GATEWAY_WORKERS": str(workers)}
        child = self._start_gateway(f"gateway-{workers}w", port, env)
        self.extra.append(child)
        return child, f"http://127.0.0.1:{port}/mcp"

    def worker_pids(self, child: Child) -> list[int]:
        return children_of(child.process.pid)

    def check_alive(self) -> None:
        for child in (self.echo, self.gateway, self.baseline, *self.extra):
            if child is not None and not child.alive():
                raise BenchError(f"{child.name} died during the run:\n{child.log_tail()}")

    def stop(self) -> None:
        for child in (*self.extra, self.baseline, self.gateway, self.echo):
            if child is not None:
                child.stop()
