"""Container suite harness: the built image, run hardened as in production, on a private network.

One session-wide stack, shared by every test in tests/container:

- the gateway image, built by ops/build-image.sh (or an already built one named by
  GATEWAY_TEST_IMAGE, e.g. the image CI just built for ops/smoke-test-image.sh);
- a private network; on it the demo MCP server (ops/compose/demo_server.py, run by the image's
  Python over Streamable HTTP, alias `demo-server`) and the gateway (alias `gateway`), the
  gateway with its configuration mounted read-only at /config: the demo server over HTTP plus the
  in-image `mcp-server-time` over stdio;
- both hardened like compose.yaml: read-only root FS, /tmp tmpfs, a named volume for the state
  folder, every capability dropped, no-new-privileges, uid 10001, --init;
- Prometheus (ops/build-prometheus-image.sh) scraping the gateway by its network alias, started
  only when a test asks for it.

The engine is whatever DOCKER_HOST points at (podman's API socket:
`eval "$(ops/podman-setup.sh start)"`, which also sets CONTAINERS_CONF for the podman CLI the
build scripts use). When no engine can be reached at all, every test here is skipped and the
reason is printed at the end of the run; CONTAINER_TESTS_REQUIRED=1 turns that skip into a
failure (for CI, where the engine must be there).

Environment:
  GATEWAY_TEST_IMAGE     an already built gateway image to test (default: run ops/build-image.sh)
  PROMETHEUS_TEST_IMAGE  an already built Prometheus image (default: ops/build-prometheus-image.sh,
                         which reuses localhost/prometheus:debian when it exists)
  CONTAINER_TESTS_REQUIRED=1  fail instead of skipping when no engine is reachable

Everything is removed at the end of the session, also when tests fail. Containers, volumes and
the network carry the label agent-mcp-gateway.test=container-suite, so leftovers of a killed run
can be found with `podman ps -a --filter label=agent-mcp-gateway.test=container-suite`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml

# What podman needs (ops/podman-setup.sh exports both): no Ryuk reaper (its image would have to be
# pulled; this harness removes what it starts), and the engine's host for mapped ports. Set before
# testcontainers reads its configuration.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from agent_mcp_gateway.access.credentials import token_hash

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = "/var/lib/agent-mcp-gateway"
GATEWAY_UID = 10001
GATEWAY_ALIAS = "gateway"
DEMO_ALIAS = "demo-server"
DEMO_PORT = 9000
ALLOWED_ORIGIN = "https://agents.example"
READY_TIMEOUT = 90.0
LABELS = {"agent-mcp-gateway.test": "container-suite"}

# What compose.yaml applies to every service (x-hardening), plus `init: true`.
HARDENING: dict[str, Any] = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "init": True,
    "labels": LABELS,
}

SERVERS: dict[str, Any] = {
    "mcpServers": {
        "demo": {
            "description": "Demo tools over Streamable HTTP",
            "url": f"http://{DEMO_ALIAS}:{DEMO_PORT}/mcp",
            "timeout_ms": 15000,
        },
        "time": {
            "description": "Current time (stdio, inside the gateway container)",
            "command": "mcp-server-time",
            "args": ["--local-timezone", "${TZ:-UTC}"],
        },
    }
}

# The image binds 0.0.0.0, so it serves only with credentials: one API token per agent.
TOKENS = {agent: secrets.token_urlsafe(32) for agent in ("researcher", "backend")}
RULES: dict[str, Any] = {
    "agents": {
        "researcher": {
            "allow": {"servers": ["time", "demo"], "tools": {"demo": ["echo", "add"]}},
            "tokens": [token_hash(TOKENS["researcher"])],
        },
        "backend": {
            "allow": {"servers": ["*"]},
            "deny": {"tools": {"demo": ["delete_*"]}},
            "tokens": [token_hash(TOKENS["backend"])],
        },
        "default": {"deny": {"servers": ["*"]}},
    },
    "defaults": {"deny_on_missing_agent": True},
}

_skip_reason: list[str] = []
_measurements: list[str] = []
_diagnostics: list[str] = []


def report(line: str) -> None:
    """Print a measurement now (visible with -s) and again in the run's terminal summary."""
    print(f"\n[container] {line}")
    _measurements.append(line)


def diagnose(title: str, text: str) -> None:
    """Keep what a failed test leaves behind (e.g. its containers' logs) for the terminal summary."""
    _diagnostics.append(f"{title}\n{text}")


def _engine_problem() -> str | None:
    """None when a container engine answers; otherwise why not."""
    where = os.environ.get("DOCKER_HOST") or "unset (the docker SDK's default socket)"
    try:
        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to connect means: no engine
        return (
            f"no container engine reachable (DOCKER_HOST={where}): {type(exc).__name__}: {exc}. "
            'Start one with: eval "$(ops/podman-setup.sh start)"'
        )
    return None


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    problem = _engine_problem()
    if problem:
        if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
            pytest.fail(f"CONTAINER_TESTS_REQUIRED=1 but {problem}")
        if not _skip_reason:
            _skip_reason.append(problem)
        pytest.skip(problem)
    client = docker.from_env(timeout=120)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skip_reason:
        terminalreporter.write_sep("-", "container tests skipped")
        terminalreporter.write_line(_skip_reason[0])
    if _measurements:
        terminalreporter.write_sep("-", "container measurements")
        for line in _measurements:
            terminalreporter.write_line(line)
    for text in _diagnostics:
        terminalreporter.write_sep("-", "container diagnostics")
        terminalreporter.write_line(text)


def _run_script(script: str) -> str:
    """Run an ops/ build script; its last stdout line is the image name."""
    done = subprocess.run(
        [str(ROOT / "ops" / script)], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        pytest.fail(f"ops/{script} failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return done.stdout.strip().splitlines()[-1]


def _image(engine: docker.DockerClient, variable: str, script: str) -> str:
    """The image named by `variable` (already built), else the one `script` builds now."""
    name = os.environ.get(variable) or _run_script(script)
    try:
        engine.images.get(name)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {name} does not exist (build it with ops/{script})")
    return name


@pytest.fixture(scope="session")
def gateway_image(engine: docker.DockerClient) -> str:
    """The image under test: GATEWAY_TEST_IMAGE if set, else built from this tree now."""
    return _image(engine, "GATEWAY_TEST_IMAGE", "build-image.sh")


@pytest.fixture(scope="session")
def prometheus_image(engine: docker.DockerClient) -> str:
    """The local Prometheus image (built from Debian's package once, then reused)."""
    return _image(engine, "PROMETHEUS_TEST_IMAGE", "build-prometheus-image.sh")


def _write_readable(directory: Path, files: dict[str, str]) -> Path:
    """Files a non-root container user can read through a bind mount."""
    directory.chmod(0o755)
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
    return directory


def _loopback(container: DockerContainer) -> bool:
    return container.get_container_host_ip() in ("localhost", "127.0.0.1", "::1")


def _publish(container: DockerContainer, port: int) -> None:
    """Publish `port` on a free host port, on loopback when the engine is local (as compose does)."""
    container.with_bind_ports(port)
    if _loopback(container):
        container.ports[str(port)] = ("127.0.0.1",)  # type: ignore[assignment]


def _host_url(container: DockerContainer, port: int) -> str:
    host = "127.0.0.1" if _loopback(container) else container.get_container_host_ip()
    return f"http://{host}:{container.get_exposed_port(port)}"


def container_logs(container: DockerContainer, tail: int = 60) -> str:
    try:
        raw = container.get_wrapped_container().logs(tail=tail)
    except Exception as exc:  # the container may be gone already
        return f"(no logs: {exc})"
    return raw.decode(errors="replace")


def exec_in(container: DockerContainer, *command: str) -> tuple[int, str]:
    """Run a command in the container as its own user; exit code and combined output."""
    result = container.exec(list(command))
    return result.exit_code, result.output.decode(errors="replace")


def _wait(what: str, check: Callable[[], bool], container: DockerContainer, timeout: float) -> float:
    """Poll `check` until true (bounded); seconds it took. Fails early if the container exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        container.reload()
        if container.status not in ("created", "running"):
            pytest.fail(f"{what}: container is {container.status}:\n{container_logs(container)}")
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout:.0f} s:\n{container_logs(container)}")


@dataclass
class Stack:
    engine: docker.DockerClient
    image: str
    network: Network
    demo: DockerContainer
    gateway: DockerContainer
    volume: str
    base_url: str
    ready_seconds: float
    ready_body: dict[str, Any]

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def audit_lines(self) -> list[dict[str, Any]]:
        code, out = exec_in(self.gateway, "cat", f"{STATE_DIR}/audit.jsonl")
        assert code == 0, out
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def _start(cleanup: ExitStack, container: DockerContainer) -> DockerContainer:
    """Start a container and make sure it is removed (with its anonymous volumes) at the end."""
    cleanup.callback(container.stop)
    container.start()
    return container


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@pytest.fixture(scope="session")
def stack(
    engine: docker.DockerClient, gateway_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    config_dir = _write_readable(
        tmp_path_factory.mktemp("gateway-config"),
        {".mcp.json": json.dumps(SERVERS, indent=2), ".mcp-gateway-rules.json": json.dumps(RULES, indent=2)},
    )
    demo_dir = _write_readable(
        tmp_path_factory.mktemp("demo-server"),
        {"demo_server.py": (ROOT / "ops/compose/demo_server.py").read_text()},
    )

    with ExitStack() as cleanup:
        network = Network(docker_network_kw={"labels": LABELS}).create()
        cleanup.callback(network.remove)
        volume = f"amg-test-data-{suffix}"
        engine.volumes.create(name=volume, labels=LABELS)
        cleanup.callback(lambda: engine.volumes.get(volume).remove(force=True))

        demo = (
            DockerContainer(
                gateway_image,
                name=f"amg-test-demo-{suffix}",
                user=f"{GATEWAY_UID}:{GATEWAY_UID}",
                entrypoint=["python3"],
                **HARDENING,
            )
            .with_command(["/demo/demo_server.py"])
            .with_envs(DEMO_HOST="0.0.0.0", DEMO_PORT=str(DEMO_PORT))
            .with_volume_mapping(demo_dir, "/demo", "ro")
            .with_tmpfs_mount("/tmp", "size=64m")
            .with_network(network)
            .with_network_aliases(DEMO_ALIAS)
        )
        _start(cleanup, demo)
        probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{DEMO_PORT}/health', timeout=2)"
        _wait("demo server /health", lambda: exec_in(demo, "python3", "-c", probe)[0] == 0, demo, 60)

        gateway = (
            DockerContainer(
                gateway_image,
                name=f"amg-test-gateway-{suffix}",
                user=f"{GATEWAY_UID}:{GATEWAY_UID}",
                **HARDENING,
            )
            .with_envs(GATEWAY_ALLOWED_ORIGINS=ALLOWED_ORIGIN, TZ="UTC")
            .with_volume_mapping(config_dir, "/config", "ro")
            .with_volume_mapping(volume, STATE_DIR, "rw")
            .with_tmpfs_mount("/tmp", "size=64m")
            .with_network(network)
            .with_network_aliases(GATEWAY_ALIAS)
        )
        _publish(gateway, 8000)
        started = time.monotonic()
        _start(cleanup, gateway)
        base_url = _host_url(gateway, 8000)
        _wait("gateway /ready", _http_ok(f"{base_url}/ready"), gateway, READY_TIMEOUT)
        ready_seconds = time.monotonic() - started
        ready_body = httpx.get(f"{base_url}/ready", timeout=5).json()
        yield Stack(
            engine, gateway_image, network, demo, gateway, volume, base_url, ready_seconds, ready_body
        )


@pytest.fixture(scope="session")
def prometheus(
    stack: Stack, prometheus_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus on the stack's network, scraping the gateway every second; its base URL.

    Its configuration is the repository's prometheus/prometheus.yml with shorter intervals, and
    it loads the repository's alert rules.
    """
    config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
    gateway_job = next(job for job in config["scrape_configs"] if job["job_name"] == "agent-mcp-gateway")
    gateway_job.pop("dns_sd_configs")  # compose's discovery by service name; here the one gateway
    gateway_job["static_configs"] = [{"targets": [f"{GATEWAY_ALIAS}:8000"]}]
    config_dir = _write_readable(
        tmp_path_factory.mktemp("prometheus-config"),
        {
            "prometheus.yml": yaml.safe_dump(config),
            "alerts.yml": (ROOT / "prometheus/alerts.yml").read_text(),
        },
    )
    suffix = uuid.uuid4().hex[:8]
    volume = f"amg-test-prometheus-{suffix}"  # as compose.yaml: a named volume, owned by its uid 65534
    container = (
        DockerContainer(prometheus_image, name=f"amg-test-prometheus-{suffix}", **HARDENING)
        .with_command(
            [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--web.listen-address=:9090",
            ]
        )
        .with_volume_mapping(config_dir, "/etc/prometheus", "ro")
        .with_volume_mapping(volume, "/prometheus", "rw")
        .with_tmpfs_mount("/tmp", "size=64m")
        .with_network(stack.network)
    )
    _publish(container, 9090)
    with ExitStack() as cleanup:
        stack.engine.volumes.create(name=volume, labels=LABELS)
        cleanup.callback(lambda: stack.engine.volumes.get(volume).remove(force=True))
        _start(cleanup, container)
        base_url = _host_url(container, 9090)
        _wait("prometheus /-/ready", _http_ok(f"{base_url}/-/ready"), container, 60)
        yield base_url
