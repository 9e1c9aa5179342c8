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
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError
from pydantic import SecretStr

from agent_mcp_gateway.access.logins import LoginStore

from conftest import (
    NODE_MODULES,
    PY,
    SERVERS,
    GatewayFiles,
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
                    {
                        "client_id": "console",
                        "application_type": "native",
                        "token_endpoint_auth_method": "none",
                        "grant_types": ["authorization_code", "refresh_token"],
                        "response_types": ["code"],
                        "redirect_uris": ["http://127.0.0.1/callback"],
                        "scope": "openid offline_access mcp",
                    },
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


CREDENTIALS_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def consenting(
    tmp_path_factory: pytest.TempPathFactory, authorization_server: AuthorizationServer, protected: str
) -> GatewayFiles:
    """Configuration for a server reached with a person's login (authorization code + PKCE)."""
    files = new_gateway_files(tmp_path_factory.mktemp("consent"))
    oauth = {"issuer": authorization_server.issuer, "scope": "mcp", "client_id": "console"}
    files.write_servers(
        {"remote": {"url": protected, "auth": {"oauth": {**oauth, "grant": "authorization_code"}}}}
    )
    files.write_rules({"agents": {agent: {"allow": {"servers": ["*"]}} for agent in ("alpha", "beta")}})
    return files


def cli(files: GatewayFiles, *arguments: str) -> subprocess.Popen[str]:
    env = {**os.environ, **files.env(GATEWAY_CREDENTIALS_KEY=CREDENTIALS_KEY)}
    return subprocess.Popen(
        [PY, "-m", "agent_mcp_gateway", *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def sign_in(url: str, person: str) -> None:
    """What a person does in the browser, headless: the provider's development sign-in page
    (any login name), then its consent page; the last redirect reaches the CLI's listener."""
    with httpx.Client(follow_redirects=True, timeout=60) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and 'name="login"' in page.text, page.text[:500]
        page = browser.post(str(page.url), data={"prompt": "login", "login": person, "password": "any"})
        assert page.status_code == 200, page.text[:500]
        if 'value="consent"' in page.text:
            page = browser.post(str(page.url), data={"prompt": "consent"})
        assert page.status_code == 200 and "login received" in page.text, page.text[:500]


def login_as(files: GatewayFiles, agent: str, person: str) -> None:
    process = cli(files, "auth", "login", "remote", "--agent", agent, "--timeout", "120")
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        if line.startswith("http"):
            url = line.strip()
            break
    assert url, process.communicate()[0]
    sign_in(url, person)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert f"logged in: remote for {agent}" in output


async def test_login_then_each_agent_acts_as_its_person_and_a_revoked_login_is_refused(
    consenting: GatewayFiles, authorization_server: AuthorizationServer
) -> None:
    login_as(consenting, "alpha", "alice")
    login_as(consenting, "beta", "bob")
    status = cli(consenting, "auth", "status").communicate(timeout=60)[0]
    assert "remote\talpha\t" in status and "remote\tbeta\t" in status
    logins_file = consenting.audit.parent / "downstream-logins.json"  # beside the pins
    assert stat.S_IMODE(logins_file.stat().st_mode) == 0o600
    gateway = start_http_gateway(
        consenting, GATEWAY_CREDENTIALS_KEY=CREDENTIALS_KEY, GATEWAY_LOG_LEVEL="DEBUG"
    )
    try:
        assert (await execute(gateway, "alpha", "whoami"))["subject"] == "alice"
        assert (await execute(gateway, "beta", "whoami"))["subject"] == "bob"
        # bob's refresh token is revoked at the authorization server (RFC 7009); once the access
        # token it gave expires, the gateway's refresh is refused and so is beta's call.
        store = LoginStore(logins_file, SecretStr(CREDENTIALS_KEY))
        found = store.find("remote", "beta")
        assert found is not None
        login, refresh = found
        revoked = httpx.post(
            str(login.revocation_endpoint),
            data={"token": refresh, "token_type_hint": "refresh_token", "client_id": "console"},
        )
        assert revoked.status_code == 200, revoked.text
        time.sleep(TOKEN_TTL + 1)
        error = await refusal(gateway, "beta", "whoami")
        # Refused on the call, or already when the session's own request needed a token.
        said = error.data.get("reason") if error.code == -32001 else gateway.log_text()
        assert "the stored login was refused (revoked or expired)" in said, error
        assert "auth login remote --agent beta" in said
        assert (await execute(gateway, "alpha", "whoami"))["subject"] == "alice"  # refreshed, rotated
        written = gateway.log_text() + consenting.audit.read_text() + logins_file.read_text()
        assert refresh not in written
        assert "eyJ" not in gateway.log_text()
    finally:
        gateway.stop()
    output = cli(consenting, "auth", "logout", "remote", "--agent", "alpha").communicate(timeout=60)[0]
    assert "logged out: remote for alpha" in output
    assert "alpha" not in cli(consenting, "auth", "status").communicate(timeout=60)[0].split("logins file")[1]


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
