"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
ops/install-test-servers.sh) run three ways, each once per requirement set (every server
scenario, `--suite all`; and exactly those the 2026-07-28 revision requires,
`--requirements 2026-07-28`), each set one CLI run:

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
# Scenarios the fixture does not implement (so they fail against it directly, and through the
# gateway is not asked of them): the tasks extension, the 2026-07-28 diagnostic tools and
# x-mcp-header tools.
NOT_IN_FIXTURE = {
    "server-stateless": "its diagnostic tool test_missing_capability",
    "http-custom-header-server-validation": "tools with x-mcp-header annotations",
    **{
        f"tasks-{name}": "the tasks extension"
        for name in (
            "capability-negotiation",
            "dispatch-and-envelope",
            "lifecycle",
            "mrtr-composition",
            "mrtr-input",
            "request-headers",
            "request-state-removal",
            "required-task-error",
            "wire-fields",
        )
    },
}
# Failing against the fixture in the 2026-07-28 set only (it passes in the other): tools/list on
# 2026-07-28 shows the fixture's schema without its allOf, if/then/else and $anchor keywords.
FIXTURE_GAPS_2026 = {"json-schema-2020-12": "composition keywords missing from the 2026-07-28 tools/list"}
# Scenarios that pass directly and fail through the gateway, each with why (README: Conformance).
# None: the suite subscribes on the handshake era while the gateway speaks 2026-07-28 to the
# fixture, whose `subscriptions/listen` stream honors the subscription as its handshake-era
# `resources/subscribe` does.
GATEWAY_GAPS: dict[str, str] = {}
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


# The requirement sets: every server scenario (pending ones included), and the 2026-07-28 ones.
REQUIREMENTS = {"all": ("--suite", "all"), "2026-07-28": ("--requirements", "2026-07-28")}


def run_suite(url: str, output: Path, requirements: str) -> dict[str, Outcome]:
    """The server scenarios of one requirement set against `url`."""
    completed = cli("server", "--url", url, *REQUIREMENTS[requirements], "-o", str(output), timeout=900)
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


@pytest.fixture(scope="module", params=list(REQUIREMENTS))
def requirements(request: pytest.FixtureRequest) -> str:
    """The requirement set the module's runs use (each fixture below runs once per set)."""
    return str(request.param)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, requirements: str) -> dict[str, Outcome]:
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
        return run_suite(f"http://127.0.0.1:{port}/mcp", root / "results", requirements)
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


def suite_through_gateway(files: GatewayFiles, requirements: str) -> GatewayRun:
    gateway = start_http_gateway(files, GATEWAY_DEFAULT_AGENT=AGENT)
    try:
        return run_suite(gateway.mcp_url, files.directory.parent / "results", requirements), gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def aggregate(tmp_path_factory: pytest.TempPathFactory, requirements: str) -> GatewayRun:
    """The fixture as the one downstream, bare names, all of it allowed in the aggregate view."""
    # Spoken to in 2026-07-28 (the newest it speaks): it asks with InputRequiredResult, which the
    # gateway passes on to a 2026-07-28 client and turns into requests for a handshake-era one.
    server = {**fixture_server("conformance_server"), "prefix": ""}
    agent = {"view": "aggregate", "allow": {"servers": ["conformance"]}}
    files = gateway_files(tmp_path_factory.mktemp("aggregate"), {"conformance": server}, agent)
    return suite_through_gateway(files, requirements)


@pytest.fixture(scope="module")
def discovery(tmp_path_factory: pytest.TempPathFactory, requirements: str) -> GatewayRun:
    """The default view and no downstream at all: what answers is the gateway's own endpoint."""
    files = gateway_files(tmp_path_factory.mktemp("discovery"), {}, {"allow": {"servers": []}})
    return suite_through_gateway(files, requirements)


def gateway_problems(gateway: HttpGateway) -> str:
    """The gateway's own warnings and errors (its JSON log lines), not its downstream's stderr."""
    own = re.compile(r'"level": "(WARNING|ERROR)"')
    lines = [line for line in gateway.log_text().splitlines() if own.search(line)]
    return "\n".join(lines[-20:])


def test_fixture_passes_every_scenario_it_implements_directly(
    scenarios: list[str], direct: dict[str, Outcome], requirements: str
) -> None:
    if requirements == "all":
        assert set(direct) == set(scenarios), "every listed server scenario leaves a result"
    known = {**NOT_IN_FIXTURE, **(FIXTURE_GAPS_2026 if requirements == "2026-07-28" else {})}
    failing = [name for name in direct if name not in known and not direct[name].passed]
    assert not failing, f"scenarios failing against the fixture itself:\n{report(direct, failing)}"
    implemented = [name for name in known if name in direct and direct[name].passed]
    assert not implemented, f"passing now, so no longer to be listed in NOT_IN_FIXTURE: {implemented}"


def test_scenarios_that_pass_directly_pass_through_the_aggregate_view(
    direct: dict[str, Outcome], aggregate: GatewayRun
) -> None:
    through, gateway = aggregate
    expected = [name for name, outcome in direct.items() if outcome.passed]
    failing = [name for name in expected if name not in through or not through[name].passed]
    fixed = [name for name in GATEWAY_GAPS if name in expected and name not in failing]
    assert not fixed, f"passing through the gateway now, so no longer to be listed in GATEWAY_GAPS: {fixed}"
    failing = [name for name in failing if name not in GATEWAY_GAPS]
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
    checked = [name for name in RESULT_CHECKS if name in direct]  # those of this requirement set
    assert len(checked) >= 3
    for name in checked:
        contents = [(run[name].details(name).get("result") or {}).get("content") for run in (through, direct)]
        assert contents[1] and contents[0] == contents[1], name


def test_transport_scenarios_pass_against_the_gateway(
    direct: dict[str, Outcome], discovery: GatewayRun
) -> None:
    outcomes, gateway = discovery
    ran = [name for name in TRANSPORT_SCENARIOS if name in direct]  # those of this requirement set
    assert ran
    failing = [name for name in ran if name not in outcomes or not outcomes[name].passed]
    assert not failing, (
        f"transport scenarios failing against the gateway:\n{report(outcomes, failing)}\n"
        f"gateway log:\n{gateway_problems(gateway)}"
    )
