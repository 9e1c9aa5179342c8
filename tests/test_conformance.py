"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
ops/install-test-servers.sh) run three ways, each with one CLI run of every server scenario:

1. directly against the conformance fixture server (the baseline: every scenario passes);
2. through a real gateway process over HTTP, in the aggregate view, in front of that fixture with
   bare tool names: every scenario that passes directly must pass here too, with the same tool
   list and the same call results;
3. the transport scenarios against a gateway in its default (discovery) view: they test the
   gateway's own Streamable HTTP endpoint, whatever it serves.

The suite's client cannot name an agent, so each gateway's default agent
(`GATEWAY_DEFAULT_AGENT`, on a loopback bind without credentials) is the one under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    NODE_MODULES,
    PY,
    SERVERS,
    GatewayFiles,
    HttpGateway,
    fixture_server,
    free_port,
    new_gateway_files,
    start_http_gateway,
)

CONFORMANCE = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
AGENT = "client"
# Scenarios about the HTTP transport and the session lifecycle rather than any tool, prompt or
# resource. server-sse-polling is not among them: it calls the fixture's test_reconnection tool.
TRANSPORT_SCENARIOS = ("server-initialize", "ping", "server-sse-multiple-streams", "dns-rebinding-protection")
# Checks whose details hold a downstream result the gateway must pass through unchanged.
RESULT_CHECKS = (
    "tools-call-simple-text",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
)
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass(frozen=True)
class Outcome:
    """One scenario's checks as the suite wrote them (`checks.json`)."""

    checks: list[dict[str, Any]]

    @property
    def failures(self) -> list[str]:
        return [f"{c['id']}: {c.get('errorMessage', '')}" for c in self.checks if c["status"] == "FAILURE"]

    @property
    def passed(self) -> bool:
        """As the suite counts it: no failed check (warnings are SHOULDs)."""
        return bool(self.checks) and not self.failures

    def details(self, check_id: str) -> dict[str, Any]:
        return next(c.get("details") or {} for c in self.checks if c["id"] == check_id)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if not CONFORMANCE.is_file():
        pytest.fail("the conformance suite is missing: run ops/install-test-servers.sh")
    return subprocess.run(["node", str(CONFORMANCE), *args], capture_output=True, text=True, timeout=timeout)


def run_suite(url: str, output: Path) -> dict[str, Outcome]:
    """Every server scenario (`--suite all`, pending ones included) against `url`."""
    completed = cli("server", "--url", url, "--suite", "all", "-o", str(output))
    outcomes: dict[str, Outcome] = {}
    for checks in output.glob("*/checks.json"):
        match = RESULT_DIR.match(checks.parent.name)
        assert match, f"unexpected result folder {checks.parent.name}"
        outcomes[match["scenario"]] = Outcome(json.loads(checks.read_text()))
    assert outcomes, f"the suite wrote no results:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    return outcomes


def report(outcomes: dict[str, Outcome], names: list[str]) -> str:
    return "\n".join(f"  {name}: {'; '.join(outcomes[name].failures) or 'no result'}" for name in names)


@pytest.fixture(scope="module")
def scenarios() -> list[str]:
    listing = cli("list", "--server").stdout
    names = re.findall(r"^\s+- (\S+)", listing, re.MULTILINE)
    assert len(names) >= 30, listing
    return names


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    port = free_port()
    process = subprocess.Popen(
        [PY, str(SERVERS / "conformance_server.py"), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5)
                break
            except httpx.HTTPError:
                assert process.poll() is None, "the conformance fixture exited at start-up"
                assert time.monotonic() < deadline, "the conformance fixture did not start"
                time.sleep(0.1)
        yield run_suite(f"http://127.0.0.1:{port}/mcp", tmp_path_factory.mktemp("direct"))
    finally:
        process.terminate()
        process.wait(10)


def gateway_files(root: Path, view: str | None) -> GatewayFiles:
    """The fixture as the one downstream and one agent allowed all of it, as the default agent."""
    files = new_gateway_files(root)
    server = fixture_server("conformance_server")
    agent: dict[str, Any] = {"allow": {"servers": ["conformance"]}}
    if view is not None:
        server["prefix"] = ""
        agent["view"] = view
    files.write_servers({"conformance": server})
    files.write_rules({"defaults": {"deny_on_missing_agent": False}, "agents": {AGENT: agent}})
    return files


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGateway]:
    files = gateway_files(tmp_path_factory.mktemp("gateway"), request.param)
    started = start_http_gateway(files, GATEWAY_DEFAULT_AGENT=AGENT)
    try:
        yield started
    finally:
        started.stop()


def test_fixture_passes_every_scenario_directly(scenarios: list[str], direct: dict[str, Outcome]) -> None:
    failing = [name for name in scenarios if name not in direct or not direct[name].passed]
    assert not failing, f"scenarios failing against the fixture itself:\n{report(direct, failing)}"


@pytest.mark.parametrize("gateway", ["aggregate"], indirect=True)
def test_scenarios_pass_through_the_gateway_in_the_aggregate_view(
    direct: dict[str, Outcome], gateway: HttpGateway, tmp_path: Path
) -> None:
    through = run_suite(gateway.mcp_url, tmp_path)
    expected = [name for name, outcome in direct.items() if outcome.passed]
    failing = [name for name in expected if name not in through or not through[name].passed]
    assert not failing, (
        f"{len(failing)} of {len(expected)} scenarios that pass directly fail through the gateway:\n"
        f"{report(through, failing)}\n{gateway.log_text()[-3000:]}"
    )
    # The scenarios check shapes; the aggregate view must also be transparent.
    listed = [sorted(run["tools-list"].details("tools-list")["tools"]) for run in (through, direct)]
    assert listed[0] == listed[1]
    for name in RESULT_CHECKS:
        assert through[name].details(name)["result"]["content"] == direct[name].details(name)["result"]["content"]


@pytest.mark.parametrize("gateway", [None], indirect=True)
def test_transport_scenarios_pass_against_the_gateway(gateway: HttpGateway, tmp_path: Path) -> None:
    outcomes = run_suite(gateway.mcp_url, tmp_path)
    failing = [name for name in TRANSPORT_SCENARIOS if name not in outcomes or not outcomes[name].passed]
    assert not failing, f"transport scenarios failing against the gateway:\n{report(outcomes, failing)}"
