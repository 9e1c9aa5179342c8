"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
ops/install-test-servers.sh) run three ways, each with one CLI run of every server scenario:

1. directly against the conformance fixture server (the baseline: every scenario passes);
2. through a real gateway process over HTTP, in the aggregate view, in front of that fixture with
   bare tool names: every scenario that passes directly must pass here too, with the same tool
   list and the same call results;
3. the transport scenarios against a gateway in its default (discovery) view with no downstream:
   they test the gateway's own Streamable HTTP endpoint and sessions, whatever it serves.

The suite's client cannot name an agent, so each gateway's default agent
(`GATEWAY_DEFAULT_AGENT`, on a loopback bind without credentials) is the one under test.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    wait_for_port,
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
        return next((c.get("details") or {} for c in self.checks if c["id"] == check_id), {})


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
    """One line per scenario: its failed checks, or that it left no result."""
    return "\n".join(
        f"  {name}: {'; '.join(outcomes[name].failures) if name in outcomes else 'no result'}"
        for name in names
    )


@pytest.fixture(scope="module")
def scenarios() -> list[str]:
    listing = cli("list", "--server")
    assert listing.returncode == 0, f"the conformance CLI does not run:\n{listing.stderr[-2000:]}"
    names = re.findall(r"^\s+- (\S+)", listing.stdout, re.MULTILINE)
    assert len(names) >= 30, listing.stdout
    return names


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The fixture served over HTTP on its own, and the suite against it."""
    root = tmp_path_factory.mktemp("direct")
    port = free_port()
    log = root / "fixture.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [PY, str(SERVERS / "conformance_server.py"), "--http", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port, process, what="the conformance fixture")
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{log.read_text()}") from None
        return run_suite(f"http://127.0.0.1:{port}/mcp", root / "results")
    finally:
        process.terminate()
        process.wait(10)


def gateway_files(root: Path, servers: dict[str, Any], agent: dict[str, Any]) -> GatewayFiles:
    """One agent, the gateway's default agent: the suite's client cannot name one."""
    files = new_gateway_files(root)
    files.write_servers(servers)
    files.write_rules({"defaults": {"deny_on_missing_agent": False}, "agents": {AGENT: agent}})
    return files


# The suite's outcomes through one gateway, and the gateway (its log outlives it).
GatewayRun = tuple[dict[str, Outcome], HttpGateway]


def suite_through_gateway(files: GatewayFiles) -> GatewayRun:
    gateway = start_http_gateway(files, GATEWAY_DEFAULT_AGENT=AGENT)
    try:
        return run_suite(gateway.mcp_url, files.directory.parent / "results"), gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def aggregate(tmp_path_factory: pytest.TempPathFactory) -> GatewayRun:
    """The fixture as the one downstream, bare names, all of it allowed in the aggregate view."""
    # Sampling and elicitation during a call, as the scenarios check them, are the handshake
    # era's (2026-07-28 makes them multi-round-trip results).
    server = {**fixture_server("conformance_server"), "prefix": "", "protocol": "2025-11-25"}
    agent = {"view": "aggregate", "allow": {"servers": ["conformance"]}}
    return suite_through_gateway(
        gateway_files(tmp_path_factory.mktemp("aggregate"), {"conformance": server}, agent)
    )


@pytest.fixture(scope="module")
def discovery(tmp_path_factory: pytest.TempPathFactory) -> GatewayRun:
    """The default view and no downstream at all: what answers is the gateway's own endpoint."""
    return suite_through_gateway(
        gateway_files(tmp_path_factory.mktemp("discovery"), {}, {"allow": {"servers": []}})
    )


def gateway_problems(gateway: HttpGateway) -> str:
    """The gateway's own warnings and errors (its JSON log lines), not its downstream's stderr."""
    own = re.compile(r'"level": "(WARNING|ERROR)"')
    lines = [line for line in gateway.log_text().splitlines() if own.search(line)]
    return "\n".join(lines[-20:])


def test_fixture_passes_every_scenario_directly(scenarios: list[str], direct: dict[str, Outcome]) -> None:
    failing = [name for name in scenarios if name not in direct or not direct[name].passed]
    assert not failing, f"scenarios failing against the fixture itself:\n{report(direct, failing)}"


def test_scenarios_that_pass_directly_pass_through_the_aggregate_view(
    direct: dict[str, Outcome], aggregate: GatewayRun
) -> None:
    through, gateway = aggregate
    expected = [name for name, outcome in direct.items() if outcome.passed]
    failing = [name for name in expected if name not in through or not through[name].passed]
    assert not failing, (
        f"{len(failing)} of {len(expected)} scenarios that pass directly fail through the gateway:\n"
        f"{report(through, failing)}\ngateway log:\n{gateway_problems(gateway)}"
    )


def test_the_aggregate_view_passes_tools_and_results_through_unchanged(
    direct: dict[str, Outcome], aggregate: GatewayRun
) -> None:
    """The scenarios check shapes; the gateway must also list the same tools and return the same
    content (the discovery view would pass tools-list with its own three tools)."""
    through, _ = aggregate
    listed = [sorted(run["tools-list"].details("tools-list").get("tools") or []) for run in (through, direct)]
    assert listed[1] and listed[0] == listed[1]
    for name in RESULT_CHECKS:
        contents = [(run[name].details(name).get("result") or {}).get("content") for run in (through, direct)]
        assert contents[1] and contents[0] == contents[1], name


def test_transport_scenarios_pass_against_the_gateway(discovery: GatewayRun) -> None:
    outcomes, gateway = discovery
    failing = [name for name in TRANSPORT_SCENARIOS if name not in outcomes or not outcomes[name].passed]
    assert not failing, (
        f"transport scenarios failing against the gateway:\n{report(outcomes, failing)}\n"
        f"gateway log:\n{gateway_problems(gateway)}"
    )
