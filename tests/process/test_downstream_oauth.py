"""OAuth 2.1 to a protected downstream, against a real authorization server and a real protected
MCP server.

The authorization server is oidc-provider (tests/servers/oidc_provider.mjs configures it); the
protected server is tests/servers/protected.py in JWT mode (fastmcp's JWTVerifier against the
server's JWKS, RFC 9728 metadata naming it). The gateway finds the authorization server from the
protected server's metadata, checks its issuer, and obtains tokens with the client credentials
grant: the agent's own client where the rules give one, else the gateway's.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError

from conftest import (
    NODE_MODULES,
    PY,
    SERVERS,
    HttpGateway,
    free_port,
    new_gateway_files,
    start_http_gateway,
    wait_for_port,
)

OIDC_PROVIDER = NODE_MODULES / "oidc-provider" / "package.json"
TOKEN_TTL = 12  # seconds: long enough for a call on a loaded machine, short enough to outlive
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GATEWAY_AUDIENCE = "http://gateway.test/mcp"  # the resource agents' own tokens are for
SECRET = {name: f"{name}-secret-" + secrets.token_hex(12) for name in ("gw", "alpha", "beta", "stranger")}


def client_metadata(client_id: str, scope: str) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": SECRET[client_id],
        "grant_types": ["client_credentials", EXCHANGE],
        "response_types": [],
        "redirect_uris": [],
        "scope": scope,
    }


@dataclass
class AuthorizationServer:
    issuer: str
    log: Path

    def issued(self, client: str) -> int:
        """Tokens issued to `client` so far."""
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if line.startswith("{") and json.loads(line).get("client") == client)


@pytest.fixture(scope="module")
def authorization_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    assert OIDC_PROVIDER.is_file(), "oidc-provider is missing: run ops/install-test-servers.sh"
    directory = tmp_path_factory.mktemp("as")
    config = directory / "config.json"
    config.write_text(
        json.dumps(
            {
                "clients": [
                    client_metadata("gw", "mcp"),
                    client_metadata("alpha", "mcp admin"),
                    client_metadata("beta", "mcp"),
                    client_metadata("stranger", "mcp"),
                ],
                "access_token_ttl": TOKEN_TTL,
                "exchange": {"subject_audience": GATEWAY_AUDIENCE},
            }
        )
    )
    port = free_port()
    log = directory / "as.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["node", str(SERVERS / "oidc_provider.mjs"), str(port), str(config)], stdout=out, stderr=out
        )
    try:
        wait_for_port(port, process, what="the authorization server (oidc-provider)")
        yield AuthorizationServer(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def protected(authorization_server: AuthorizationServer) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    issuer = authorization_server.issuer
    command = [PY, str(SERVERS / "protected.py"), "--http", str(port), "--audience", url]
    process = subprocess.Popen(
        [*command, "--issuer", issuer, "--jwks", f"{issuer}/jwks"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, what="the protected fixture server")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, authorization_server: AuthorizationServer, protected: str
) -> Iterator[HttpGateway]:
    files = new_gateway_files(tmp_path_factory.mktemp("oauth"))
    oauth = {"issuer": authorization_server.issuer, "scope": "mcp"}
    files.write_servers(
        {
            "remote": {
                "url": protected,
                "auth": {"oauth": {**oauth, "client_id": "gw", "client_secret": "${GW_SECRET}"}},
            },
            # The same server, expecting tokens of another issuer: its metadata leads elsewhere.
            "elsewhere": {
                "url": protected,
                "auth": {
                    "oauth": {
                        "issuer": "http://127.0.0.1:9/",
                        "client_id": "stranger",
                        "client_secret": "${STRANGER_SECRET}",
                    }
                },
            },
        }
    )
    (files.directory / "beta.secret").write_text(SECRET["beta"] + "\n")
    agents: dict[str, Any] = {
        "alpha": {
            "credentials": {"remote": {"oauth": {"client_id": "alpha", "client_secret": "${ALPHA_SECRET}"}}}
        },
        "beta": {
            "credentials": {
                "remote": {"oauth": {"client_id": "beta", "client_secret": "${file:beta.secret}"}}
            }
        },
        "gamma": {},
    }
    for agent in agents.values():
        agent["allow"] = {"servers": ["*"]}
    files.write_rules({"agents": agents})
    started = start_http_gateway(
        files,
        GW_SECRET=SECRET["gw"],
        ALPHA_SECRET=SECRET["alpha"],
        STRANGER_SECRET=SECRET["stranger"],
        GATEWAY_LOG_LEVEL="DEBUG",
    )
    yield started
    started.stop()


def mcp_client(gateway: HttpGateway) -> Client:
    return Client(StreamableHttpTransport(gateway.mcp_url), timeout=90)


async def execute(gateway: HttpGateway, agent: str, tool: str, server: str = "remote") -> dict[str, Any]:
    async with mcp_client(gateway) as session:
        result = await session.call_tool_mcp(
            "execute_tool", {"agent_id": agent, "server": server, "tool": tool, "args": {}}
        )
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refusal(gateway: HttpGateway, agent: str, tool: str, server: str = "remote") -> MCPError:
    async with mcp_client(gateway) as session:
        with pytest.raises(MCPError) as caught:
            await session.call_tool_mcp(
                "execute_tool", {"agent_id": agent, "server": server, "tool": tool, "args": {}}
            )
    return caught.value


async def test_each_agent_gets_tokens_of_its_own_client(gateway: HttpGateway) -> None:
    alpha = await execute(gateway, "alpha", "whoami")
    beta = await execute(gateway, "beta", "whoami")
    gamma = await execute(gateway, "gamma", "whoami")
    assert (alpha["client_id"], beta["client_id"], gamma["client_id"]) == ("alpha", "beta", "gw")
    assert alpha["scopes"] == ["mcp"]


async def test_a_token_is_cached_then_renewed_when_it_expires(
    gateway: HttpGateway, authorization_server: AuthorizationServer
) -> None:
    first = await execute(gateway, "beta", "whoami")
    issued = authorization_server.issued("beta")
    assert (await execute(gateway, "beta", "whoami"))["token_id"] == first["token_id"]
    assert authorization_server.issued("beta") == issued  # the cached token, no new one
    time.sleep(TOKEN_TTL + 1)
    renewed = await execute(gateway, "beta", "whoami")
    assert renewed["token_id"] != first["token_id"]
    assert authorization_server.issued("beta") > issued


async def test_insufficient_scope_steps_up_once(gateway: HttpGateway) -> None:
    """admin_action answers 403 insufficient_scope scope="mcp admin": alpha's client may have
    admin, so the gateway asks for it and the retry passes; beta's may not, so its call fails
    with a clear error and its session stays usable."""
    done = await execute(gateway, "alpha", "admin_action")
    assert done["done"] is True and done["scopes"] == ["admin", "mcp"]
    error = await refusal(gateway, "beta", "admin_action")
    assert error.data["code"] == "DOWNSTREAM_ERROR", error
    assert (await execute(gateway, "beta", "whoami"))["client_id"] == "beta"


async def test_an_authorization_server_that_is_not_the_configured_issuer_is_refused(
    gateway: HttpGateway, authorization_server: AuthorizationServer
) -> None:
    error = await refusal(gateway, "gamma", "whoami", server="elsewhere")
    assert error.code == -32001, error
    # The client's secret never went to the server the metadata named.
    assert authorization_server.issued("stranger") == 0
    assert "OAuthFlowError" in json.dumps(error.data)
    assert f"issuer mismatch: {authorization_server.issuer} != http://127.0.0.1:9/" in gateway.log_text()


@pytest.fixture(scope="module")
def exchanging(
    tmp_path_factory: pytest.TempPathFactory, authorization_server: AuthorizationServer, protected: str
) -> Iterator[HttpGateway]:
    """A gateway whose agents authenticate with JWTs of the authorization server, and which
    exchanges each agent's token for the protected server."""
    issuer = authorization_server.issuer
    files = new_gateway_files(tmp_path_factory.mktemp("exchange"))
    oauth = {"issuer": issuer, "scope": "mcp", "client_id": "gw", "client_secret": "${GW_SECRET}"}
    files.write_servers(
        {"remote": {"url": protected, "auth": {"oauth": {**oauth, "grant": "token-exchange"}}}}
    )
    jwt = {"issuer": issuer, "audience": GATEWAY_AUDIENCE, "jwks_uri": f"{issuer}/jwks", "agent_claim": "sub"}
    files.write_rules(
        {
            "agents": {agent: {"allow": {"servers": ["*"]}} for agent in ("alpha", "beta")},
            "auth": {"jwt": jwt},
        }
    )
    started = start_http_gateway(files, GW_SECRET=SECRET["gw"], GATEWAY_LOG_LEVEL="DEBUG")
    yield started
    started.stop()


def agent_token(authorization_server: AuthorizationServer, agent: str) -> str:
    """The agent's own access token for the gateway, from the authorization server."""
    response = httpx.post(
        f"{authorization_server.issuer}/token",
        data={"grant_type": "client_credentials", "scope": "mcp", "resource": GATEWAY_AUDIENCE},
        auth=(agent, SECRET[agent]),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def token_id(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


async def test_token_exchange_acts_on_behalf_of_each_jwt_agent(
    exchanging: HttpGateway, authorization_server: AuthorizationServer
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    inbound: dict[str, str] = {}
    for agent in ("alpha", "beta"):
        inbound[agent] = agent_token(authorization_server, agent)
        headers = {"Authorization": f"Bearer {inbound[agent]}"}
        async with Client(
            StreamableHttpTransport(exchanging.mcp_url, headers=headers), timeout=90
        ) as session:
            result = await session.call_tool_mcp(
                "execute_tool", {"server": "remote", "tool": "whoami", "args": {}}
            )
        assert not result.is_error, result.content
        assert result.structured_content is not None
        seen[agent] = result.structured_content
    for agent in ("alpha", "beta"):
        # The downstream sees the agent, acted for by the gateway's client, on a token of its own
        # audience: never the agent's inbound token (whose audience is the gateway).
        assert seen[agent]["subject"] == agent
        assert seen[agent]["actor"] == {"sub": "gw"}
        assert seen[agent]["token_id"] != token_id(inbound[agent])
    assert authorization_server.log.read_text().count('"issued":"token-exchange"') >= 2
    written = exchanging.log_text() + exchanging.files.audit.read_text()
    assert "whoami" in written
    for token in inbound.values():
        assert token not in written
    assert SECRET["gw"] not in written


async def test_no_secret_or_token_in_logs_audit_metrics_or_answers(gateway: HttpGateway) -> None:
    """Run last in this module: it greps everything the gateway wrote and answered."""
    with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
        answered = http.get("/metrics").text + http.get("/ready").text
    async with mcp_client(gateway) as session:
        listed = await session.call_tool_mcp("list_servers", {"agent_id": "alpha", "include_metadata": True})
    answered += json.dumps(listed.structured_content)
    written = gateway.log_text() + "".join(
        path.read_text(errors="replace") for path in gateway.files.audit.parent.glob("audit.jsonl*")
    )
    assert "whoami" in written
    for secret in SECRET.values():
        assert secret not in written and secret not in answered
    assert "eyJ" not in written and "eyJ" not in answered  # no JWT (access token) either
