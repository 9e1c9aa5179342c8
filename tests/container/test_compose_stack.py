"""ops/stack.sh runs compose.yaml with podman-compose: up waits for health, down leaves nothing.

The stack runs under its own project name and free loopback ports, on the images this session
built (the gateway image under test and the local Prometheus image), beside the suite's own
containers. Debian's podman-compose 1.0.3 exits 0 when a container fails and never waits for
health; these tests hold the wrapper to what it promises instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from .conftest import report
from conftest import free_port

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "ops" / "stack.sh"
SERVICES = ("demo-server", "gateway", "prometheus")


def stack_sh(command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK), command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def leftovers(engine: docker.DockerClient, project: str) -> dict[str, list[str]]:
    label = {"label": f"io.podman.compose.project={project}"}
    return {
        "containers": [c.name for c in engine.containers.list(all=True, filters=label)],
        "networks": [n.name for n in engine.networks.list(filters=label)],
        "volumes": [v.name for v in engine.volumes.list(filters=label)],
    }


def existing_volumes(engine: docker.DockerClient, names: set[str]) -> set[str]:
    return {v.name for v in engine.volumes.list()} & names


@pytest.fixture
def stack_env(gateway_image: str, prometheus_image: str) -> Iterator[dict[str, str]]:
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed (ops/podman-setup.sh installs it)")
    project = f"amg-test-stack-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "STACK_PROJECT": project,
        "STACK_TIMEOUT": "180",
        "GATEWAY_IMAGE": gateway_image,
        "PROMETHEUS_IMAGE": prometheus_image,
        "GATEWAY_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
    }
    yield env
    stack_sh("down", env, timeout=300)  # also after a failed test; a no-op after a clean down


async def test_stack_up_is_healthy_answers_and_down_leaves_nothing(
    engine: docker.DockerClient, stack_env: dict[str, str]
) -> None:
    project = stack_env["STACK_PROJECT"]
    gateway = f"http://127.0.0.1:{stack_env['GATEWAY_PORT']}"
    prometheus = f"http://127.0.0.1:{stack_env['PROMETHEUS_PORT']}"

    started = time.monotonic()
    up = stack_sh("up", stack_env)
    up_seconds = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    for service in SERVICES:
        assert f"{service}: healthy" in up.stderr, up.stderr
    report(f"ops/stack.sh up (images already built) -> all services healthy: {up_seconds:.1f} s")

    status = stack_sh("status", stack_env)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()}
    assert rows == {service: ["running", "healthy"] for service in SERVICES}, status.stdout

    containers = engine.containers.list(filters={"label": f"io.podman.compose.project={project}"})
    assert {c.labels["com.docker.compose.service"] for c in containers} == set(SERVICES)
    volumes = {
        m["Name"] for c in containers for m in c.attrs["Mounts"] if m["Type"] == "volume" and m.get("Name")
    }
    assert {f"{project}_gateway-data", f"{project}_prometheus-data"} <= volumes
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for c in containers:
        assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True, c.name
        if compose[c.labels["com.docker.compose.service"]].get("init"):
            # podman's init (catatonit) is PID 1; the compat API does not report `init`.
            code, pid1 = c.exec_run(["cat", "/proc/1/cmdline"])
            assert code == 0 and pid1.split(b"\0")[0] == b"/run/podman-init", (c.name, pid1)

    # The gateway answers through its published port, with the demo server reached by name on
    # the compose network (container DNS) and mcp-server-time over stdio in its own container.
    # The demo server may have come up after the gateway (podman-compose does not wait), so the
    # gateway's reconnect is given a moment.
    body: dict = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(f"{gateway}/ready", timeout=5)
        body = response.json()
        if response.status_code == 200 and all(s["state"] == "up" for s in body["servers"].values()):
            break
        time.sleep(1)
    assert {name: s["state"] for name, s in body["servers"].items()} == {"demo": "up", "time": "up"}, body

    # The stack runs with API tokens (ops/compose-env.sh, run by `up`): each agent has its own.
    tokens = dict(
        line.split("=", 1) for line in (ROOT / "ops/compose/client.env").read_text().split() if "=" in line
    )

    def as_agent(agent: str) -> Client:
        headers = {"Authorization": f"Bearer {tokens[f'{agent.upper()}_TOKEN']}"}
        return Client(StreamableHttpTransport(f"{gateway}/mcp", headers=headers), timeout=30)

    async with as_agent("researcher") as c:
        echoed = await c.call_tool_mcp(
            "execute_tool",
            {"agent_id": "researcher", "server": "demo", "tool": "echo", "args": {"message": "compose"}},
        )
        assert not echoed.is_error and echoed.content[0].text == "compose"
    async with as_agent("backend") as c:
        now = await c.call_tool_mcp(
            "execute_tool",
            {
                "agent_id": "backend",
                "server": "time",
                "tool": "get_current_time",
                "args": {"timezone": "UTC"},
            },
        )
        assert not now.is_error and json.loads(now.content[0].text)["timezone"] == "UTC"

    # Prometheus answers and scrapes the gateway by its service name.
    assert httpx.get(f"{prometheus}/-/ready", timeout=5).status_code == 200
    target: dict = {}
    deadline = time.monotonic() + 90  # compose.yaml's prometheus.yml scrapes every 15 s
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        target = next((t for t in targets if t["labels"]["job"] == "agent-mcp-gateway"), {})
        if target.get("health") == "up":
            break
        time.sleep(1)
    assert target.get("health") == "up", target

    down = stack_sh("down", stack_env, timeout=300)
    assert down.returncode == 0, down.stderr
    assert leftovers(engine, project) == {"containers": [], "networks": [], "volumes": []}
    # Anonymous volumes too (the image declares VOLUME for its state folder).
    assert existing_volumes(engine, volumes) == set()
    assert stack_sh("status", stack_env).returncode != 0


def test_stack_up_fails_when_a_service_cannot_run(
    engine: docker.DockerClient, stack_env: dict[str, str], gateway_image: str
) -> None:
    """Where podman-compose says nothing, `up` exits non-zero and names the service."""
    project = stack_env["STACK_PROJECT"]
    # The gateway image in Prometheus's place: its entrypoint rejects Prometheus's arguments.
    broken = {**stack_env, "PROMETHEUS_IMAGE": gateway_image, "STACK_TIMEOUT": "60"}
    started = time.monotonic()
    up = stack_sh("up", broken)
    assert up.returncode != 0, up.stderr
    assert "prometheus:" in up.stderr and "ops/stack.sh down" in up.stderr, up.stderr
    elapsed = time.monotonic() - started
    report(f"ops/stack.sh up with a broken service: exit {up.returncode} after {elapsed:.1f} s")

    down = stack_sh("down", broken, timeout=300)
    assert down.returncode == 0, down.stderr
    assert leftovers(engine, project) == {"containers": [], "networks": [], "volumes": []}
