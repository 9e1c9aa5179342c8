"""Authenticated agents: the credential decides the agent, never a claim.

Process-level: a real gateway under Granian (and over stdio), real MCP clients, real tokens and
JWTs signed by a key made here. What each test shows is named in SECURITY.md. How a credential
is checked and decides the agent, without a gateway, is in tests/unit/access/test_credentials.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import MCPError
from prometheus_client.parser import text_string_to_metric_families

from agent_mcp_gateway.access.credentials import token_hash
from agent_mcp_gateway.observe.audit import session_ref

from conftest import (
    ACCEPT_BOTH,
    PY,
    GatewayFiles,
    HttpGateway,
    fixture_server,
    free_port,
    initialize_message,
    start_http_gateway,
    stdio_gateway,
    wait_until,
)
from unit.access.test_credentials import Credentials

BOTH = ACCEPT_BOTH
INIT = initialize_message("auth-test")
SECRET_URL_PASSWORD = "url-password-" + secrets.token_hex(8)
SECRET_URL_QUERY = "url-query-" + secrets.token_hex(8)
SECRET_HEADER = "header-secret-" + secrets.token_hex(8)


def servers() -> dict[str, Any]:
    return {
        "echo": fixture_server("echo"),
        "remote": {
            "description": "an HTTP downstream whose URL and headers carry secrets",
            "url": f"http://gateway-user:{SECRET_URL_PASSWORD}@127.0.0.1:9/mcp?key={SECRET_URL_QUERY}",
            "headers": {"Authorization": f"Bearer {SECRET_HEADER}"},
        },
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rpc(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])
        raise AssertionError(f"no response in {response.text!r}")
    return response.json()


def call(name: str, arguments: dict[str, Any], request_id: int = 2) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def open_session(client: httpx.Client, headers: dict[str, str]) -> str:
    response = client.post("/mcp", json=INIT, headers={**BOTH, **headers})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    session = {**BOTH, **headers, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}
    client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    return session_id


def in_session(session_id: str, headers: dict[str, str]) -> dict[str, str]:
    return {**BOTH, **headers, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}


def make_files(directory: Path) -> GatewayFiles:
    config = directory / "config"
    config.mkdir(parents=True)
    return GatewayFiles(
        config, config / ".mcp.json", config / ".mcp-gateway-rules.json", directory / "audit.jsonl"
    )


@pytest.fixture(scope="module")
def creds() -> Credentials:
    return Credentials()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, creds: Credentials) -> Iterator[HttpGateway]:
    """One gateway with tokens and a JWT issuer, shared by the read-only tests below."""
    files = make_files(tmp_path_factory.mktemp("secured"))
    files.write_servers(servers())
    files.write_rules(creds.rules())
    gateway = start_http_gateway(files)
    yield gateway
    gateway.stop()


# --- refusals -----------------------------------------------------------------------------------


def refusals(creds: Credentials) -> dict[str, dict[str, str]]:
    return {
        "no credential": {},
        "wrong token": bearer(secrets.token_urlsafe(32)),
        "token hash instead of token": bearer(token_hash(creds.researcher)),
        "basic scheme": {"Authorization": f"Basic {creds.researcher}"},
        "bearer without a token": {"Authorization": "Bearer"},
        "expired JWT": bearer(creds.jwt(expires_in_seconds=-3600)),
        "wrong audience": bearer(creds.jwt(audience="someone-else")),
        "wrong issuer": bearer(creds.jwt(issuer="https://evil.test")),
        "foreign key": bearer(creds.jwt(key=creds.foreign_key)),
        "unknown agent claim": bearer(creds.jwt(subject="ghost")),
        "huge header": bearer("x" * 20_000),
    }


def test_every_bad_credential_gets_401(secured: HttpGateway, creds: Credentials) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        for label, headers in refusals(creds).items():
            for body in (INIT, call("list_servers", {"agent_id": "builder"})):
                response = client.post(
                    "/mcp", json=body, headers={**BOTH, **headers, "X-Agent-Id": "builder"}
                )
                assert response.status_code == 401, (label, response.text)
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer "), label
                assert (
                    f'resource_metadata="{secured.base_url}/.well-known/oauth-protected-resource/mcp"'
                    in challenge
                )
                assert response.json()["error"]["data"]["code"] == "UNAUTHENTICATED", label
        # the root path serves MCP too, and is guarded the same way
        assert client.post("/", json=INIT, headers=BOTH).status_code == 401
        # liveness, readiness and metrics stay open for probes and scrapers
        assert client.get("/health").status_code == 200
        assert client.get("/ready").json()["auth"] == {"credentials_required": True}

    def refused() -> list[dict[str, Any]]:
        return [line for line in secured.files.refusal_lines() if line["error_code"] == "UNAUTHENTICATED"]

    assert wait_until(lambda: sum(line["claimed_agent_id"] == "builder" for line in refused()) == 22, 5)
    assert all(line["agent_id"] is None and line["decision"] == "DENY" for line in refused())


def test_protected_resource_metadata(secured: HttpGateway) -> None:
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        document = httpx.get(secured.base_url + path, timeout=5).json()
        assert document["resource"] == f"{secured.base_url}/mcp"
        assert document["authorization_servers"] == ["https://login.test"]
        assert document["bearer_methods_supported"] == ["header"]


# --- acting with a credential ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_token_and_jwt_each_see_their_own_agent(
    secured: HttpGateway, creds: Credentials, mode: str
) -> None:
    expected = {
        creds.researcher: ["echo"],
        creds.jwt("builder"): ["echo", "remote"],
        creds.builder: ["echo", "remote"],
    }
    for credential, names in expected.items():
        transport = StreamableHttpTransport(secured.mcp_url, headers=bearer(credential))
        async with Client(transport, mode=mode, timeout=30) as client:
            listed = await client.call_tool_mcp("list_servers", {})
            assert [server["name"] for server in listed.structured_content["servers"]] == names
            tools = await client.call_tool_mcp("get_server_tools", {"server": "echo"})
            visible = {tool["name"] for tool in tools.structured_content["tools"]}
            if credential == creds.researcher:
                assert "drop_table" not in visible and "echo" in visible
            # a claim of the credential's own agent is fine, of any other agent is -32003
            own = "researcher" if credential == creds.researcher else "builder"
            other = "builder" if own == "researcher" else "researcher"
            await client.call_tool_mcp("list_servers", {"agent_id": own})
            with pytest.raises(MCPError) as refused:
                await client.call_tool_mcp("list_servers", {"agent_id": other})
            assert refused.value.code == -32003
            assert f"belongs to agent '{own}'" in refused.value.message


def test_header_claim_of_another_agent_is_refused(secured: HttpGateway, creds: Credentials) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        session_id = open_session(client, bearer(creds.researcher))
        headers = in_session(session_id, {**bearer(creds.researcher), "X-Agent-Id": "builder"})
        refused = rpc(client.post("/mcp", json=call("list_servers", {}), headers=headers))
        assert refused["error"]["code"] == -32003

    def refusal() -> list[dict[str, Any]]:
        return [line for line in secured.files.audit_lines() if line["session_id"] == session_ref(session_id)]

    assert wait_until(refusal, 5)
    line = refusal()[-1]
    assert (line["agent_id"], line["claimed_agent_id"], line["decision"]) == (None, "builder", "DENY")


def test_session_replayed_with_another_agents_credential_is_refused(
    secured: HttpGateway, creds: Credentials
) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        session_id = open_session(client, bearer(creds.researcher))
        body = call("list_servers", {})
        stolen = client.post("/mcp", json=body, headers=in_session(session_id, bearer(creds.builder)))
        assert stolen.status_code == 404
        stolen_jwt = client.post(
            "/mcp", json=body, headers=in_session(session_id, bearer(creds.jwt("builder")))
        )
        assert stolen_jwt.status_code == 404
        owner = rpc(client.post("/mcp", json=body, headers=in_session(session_id, bearer(creds.researcher))))
        assert "result" in owner, owner
        assert [server["name"] for server in owner["result"]["structuredContent"]["servers"]] == ["echo"]
        invented = client.post(
            "/mcp", json=body, headers=in_session(secrets.token_hex(16), bearer(creds.builder))
        )
        assert invented.status_code == 404


def test_audit_and_metrics_use_the_authenticated_agent(secured: HttpGateway, creds: Credentials) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        session_id = open_session(client, bearer(creds.builder))
        result = rpc(
            client.post(
                "/mcp", json=call("list_servers", {}), headers=in_session(session_id, bearer(creds.builder))
            )
        )
        assert "result" in result
        metrics = client.get("/metrics").text

    def lines() -> list[dict[str, Any]]:
        return [
            entry for entry in secured.files.audit_lines() if entry["session_id"] == session_ref(session_id)
        ]

    assert wait_until(lines, 5)
    line = lines()[-1]
    assert (line["agent_id"], line["auth"], line["decision"]) == ("builder", "token", "ALLOW")
    assert line["credential"] == token_hash(creds.builder).removeprefix("sha256:")[:12]
    operations = [
        sample
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "gateway_operations_total" and sample.labels["agent"] == "builder"
    ]
    assert operations and all(sample.labels["agent"] != "unknown" for sample in operations)


REFUSAL_AUDIT_LIMIT = 4096  # bytes of audit one refused request may cause, whatever it sends
header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=64).map(
    lambda text: text * 3000  # up to ~190 KB per header, what the review sent
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(session=header_value, agent=header_value, request_id=header_value, credential=header_value)
def test_property_no_refused_request_writes_more_than_a_fixed_amount_of_audit(
    secured: HttpGateway, session: str, agent: str, request_id: str, credential: str
) -> None:
    """Whatever headers an unauthenticated request carries (the review sent ~190 KB of them), it
    adds at most a fixed number of bytes of audit, and never to the decision log."""
    files = secured.files
    headers = {"mcp-session-id": session, "x-agent-id": agent, "x-request-id": request_id}
    if credential:
        headers["authorization"] = f"Bearer {credential}"

    def written() -> tuple[int, int]:
        refusals = files.audit.with_name(files.audit.name + ".refusals")
        return (
            files.audit.stat().st_size if files.audit.exists() else 0,
            refusals.stat().st_size if refusals.exists() else 0,
        )

    decisions_before, refusals_before = written()
    with httpx.Client(base_url=secured.base_url, timeout=30) as client:
        status = client.post("/mcp", json=INIT, headers={**BOTH, **headers}).status_code
    assert status in (400, 401, 404, 413, 431), status
    time.sleep(0.05)  # the writer thread; a late line only makes the next example's bound stricter
    decisions_after, refusals_after = written()
    assert decisions_after == decisions_before
    assert refusals_after - refusals_before <= REFUSAL_AUDIT_LIMIT


def test_no_secret_leaves_the_gateway(secured: HttpGateway, creds: Credentials) -> None:
    """Run last in this module: it greps everything the shared gateway wrote."""
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        session_id = open_session(client, bearer(creds.builder))
        listed = rpc(
            client.post(
                "/mcp",
                json=call("list_servers", {"include_metadata": True}),
                headers=in_session(session_id, bearer(creds.builder)),
            )
        )
        remote = next(s for s in listed["result"]["structuredContent"]["servers"] if s["name"] == "remote")
        assert remote["url"] == "http://127.0.0.1:9"
        assert remote["headers"] == ["Authorization"]
        shown = json.dumps(listed)
        for secret in (SECRET_URL_PASSWORD, SECRET_URL_QUERY, SECRET_HEADER, "gateway-user"):
            assert secret not in shown
        metrics = client.get("/metrics").text + json.dumps(client.get("/metrics?format=json").json())
        ready = client.get("/ready").text
    written = secured.log_text() + secured.files.audit.read_text() + metrics + ready
    for secret in [*creds.all_secrets(), SECRET_URL_PASSWORD, SECRET_URL_QUERY, SECRET_HEADER]:
        assert secret not in written
    assert "Bearer " + creds.builder not in written


# --- reload: added and removed tokens ------------------------------------------------------------


def test_revoked_token_stops_at_once_also_for_its_open_session(tmp_path: Path, creds: Credentials) -> None:
    files = make_files(tmp_path)
    files.write_servers({"echo": fixture_server("echo")})
    files.write_rules(creds.rules())
    gateway = start_http_gateway(files)
    try:
        with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
            session_id = open_session(client, bearer(creds.revocable))
            body = call("list_servers", {})
            headers = in_session(session_id, bearer(creds.revocable))
            assert "result" in rpc(client.post("/mcp", json=body, headers=headers))
            files.write_rules(creds.rules(with_revocable=False))
            assert wait_until(lambda: client.post("/mcp", json=body, headers=headers).status_code == 401, 15)
            # the agent's other token keeps working, in a new session
            fresh = open_session(client, bearer(creds.researcher))
            assert "result" in rpc(
                client.post("/mcp", json=body, headers=in_session(fresh, bearer(creds.researcher)))
            )
            # and adding a token back makes it work again
            files.write_rules(creds.rules())
            assert wait_until(
                lambda: (
                    client.post("/mcp", json=INIT, headers={**BOTH, **bearer(creds.revocable)}).status_code
                    == 200
                ),
                15,
            )
    finally:
        gateway.stop()


# --- without credentials: safe by default ---------------------------------------------------------


def claims_only(files: GatewayFiles) -> None:
    files.write_servers({"echo": fixture_server("echo")})
    files.write_rules(
        {
            "agents": {
                "researcher": {"allow": {"servers": ["echo"]}},
                "builder": {"allow": {"servers": ["*"]}},
            }
        }
    )


def test_open_bind_without_credentials_refuses_to_start(gateway_files: GatewayFiles) -> None:
    claims_only(gateway_files)
    env = gateway_files.env(
        GATEWAY_TRANSPORT="http", GATEWAY_HTTP_HOST="0.0.0.0", GATEWAY_HTTP_PORT=str(free_port())
    )
    result = subprocess.run(
        [PY, "-m", "agent_mcp_gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=gateway_files.directory,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GATEWAY_AUTH=none" in lines[0] and "0.0.0.0" in lines[0], result.stderr


def test_auth_none_serves_claims_on_an_open_bind_with_a_warning(gateway_files: GatewayFiles) -> None:
    claims_only(gateway_files)
    gateway = start_http_gateway(gateway_files, GATEWAY_HTTP_HOST="0.0.0.0", GATEWAY_AUTH="none")
    try:
        ready = httpx.get(f"{gateway.base_url}/ready", timeout=5).json()
        assert ready["auth"]["credentials_required"] is False
        assert "no credentials are configured" in ready["auth"]["warning"]
        assert "agents are not authenticated" in gateway.log_text()
        # a reload cannot take credentials away from an open bind without GATEWAY_AUTH=none: here
        # it is set, so claims keep working
        with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
            session_id = open_session(client, {})
            result = rpc(
                client.post(
                    "/mcp",
                    json=call("list_servers", {"agent_id": "researcher"}),
                    headers=in_session(session_id, {}),
                )
            )
            assert [s["name"] for s in result["result"]["structuredContent"]["servers"]] == ["echo"]
    finally:
        gateway.stop()


def test_session_without_a_gateway_record_is_refused_not_adopted(gateway_files: GatewayFiles) -> None:
    """The gateway's record expires (TTL) while the client still holds the session open."""
    claims_only(gateway_files)
    gateway = start_http_gateway(gateway_files, GATEWAY_SESSION_TTL="1")
    try:
        with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
            session_id = open_session(client, {})
            headers = in_session(session_id, {})
            first = rpc(
                client.post("/mcp", json=call("list_servers", {"agent_id": "researcher"}), headers=headers)
            )
            assert "result" in first
            time.sleep(5)  # past the 1 s TTL and a 1 s sweep, with room for a loaded machine
            switched = client.post(
                "/mcp", json=call("list_servers", {"agent_id": "builder"}), headers=headers
            )
            assert switched.status_code == 404
            assert switched.json()["error"]["data"]["code"] == "SESSION_NOT_FOUND"
    finally:
        gateway.stop()


# --- rate limits: charged only to the agent a request acted as -------------------------------------


def test_unauthenticated_junk_cannot_spend_another_agents_limit(
    secured: HttpGateway, creds: Credentials
) -> None:
    with httpx.Client(base_url=secured.base_url, timeout=10) as client:
        for _ in range(40):  # more than researcher's 30/minute
            junk = client.post("/mcp", content=b"{not json", headers={**BOTH, "X-Agent-Id": "researcher"})
            assert junk.status_code in (400, 401)
        session_id = open_session(client, bearer(creds.researcher))
        result = rpc(
            client.post(
                "/mcp",
                json=call("list_servers", {}),
                headers=in_session(session_id, bearer(creds.researcher)),
            )
        )
        assert "result" in result, result


async def test_rate_limit_over_stdio(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"echo": fixture_server("echo")})
    gateway_files.write_rules(
        {"agents": {"limited": {"allow": {"servers": ["echo"]}, "rate_limit": "2/minute"}}}
    )
    async with stdio_gateway(gateway_files, GATEWAY_AGENT="limited") as client:
        for _ in range(2):
            await client.call_tool_mcp("list_servers", {})
        with pytest.raises(MCPError) as limited:
            await client.call_tool_mcp("list_servers", {})
        assert limited.value.code == -32005
        assert limited.value.data["code"] == "RATE_LIMITED"


# --- stdio: GATEWAY_AGENT pins the agent -------------------------------------------------------------


async def test_gateway_agent_pins_stdio(gateway_files: GatewayFiles) -> None:
    claims_only(gateway_files)
    async with stdio_gateway(gateway_files, GATEWAY_AGENT="researcher") as client:
        listed = await client.call_tool_mcp("list_servers", {})
        assert [s["name"] for s in listed.structured_content["servers"]] == ["echo"]
        with pytest.raises(MCPError) as refused:
            await client.call_tool_mcp("list_servers", {"agent_id": "builder"})
        assert refused.value.code == -32003
    lines = gateway_files.audit_lines()
    assert [(line["auth"], line["decision"]) for line in lines] == [("pinned", "ALLOW"), (None, "DENY")]
    assert lines[1]["claimed_agent_id"] == "builder"


def test_unknown_gateway_agent_stops_stdio_start_up(gateway_files: GatewayFiles) -> None:
    claims_only(gateway_files)
    result = subprocess.run(
        [PY, "-m", "agent_mcp_gateway"],
        env=gateway_files.env(GATEWAY_AGENT="ghost"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "agent-mcp-gateway: GATEWAY_AGENT names agent 'ghost', which the rules file does not define"
    )
