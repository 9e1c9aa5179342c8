"""HTTP edge findings of the security review (SECURITY.md): a foreign `Host` (DNS rebinding and
spoofed RFC 9728 metadata), an unauthenticated request ending someone's session, and /metrics
naming every agent to anyone. In process: the real ASGI app, its lifespan and a real downstream.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from agent_mcp_gateway.access.credentials import token_hash
from agent_mcp_gateway.edge.host import HostNames
from agent_mcp_gateway.settings import SettingsError, load_settings

from conftest import ACCEPT_BOTH, GatewayFiles, asgi_gateway, fixture_server, initialize_message

TOKEN = secrets.token_urlsafe(32)
METRICS_TOKEN = secrets.token_urlsafe(24)
INIT = initialize_message("security")


def secured(files: GatewayFiles) -> None:
    files.write_servers({"echo": fixture_server("echo")})
    files.write_rules({"agents": {"dev": {"allow": {"servers": ["echo"]}, "tokens": [token_hash(TOKEN)]}}})


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_session(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post(
        "/mcp", json=initialize_message("security"), headers={**ACCEPT_BOTH, **bearer()}
    )
    assert response.status_code == 200, response.text
    session = {**ACCEPT_BOTH, **bearer(), "mcp-session-id": response.headers["mcp-session-id"]}
    session["mcp-protocol-version"] = "2025-11-25"
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post("/mcp", json=initialized, headers=session)).status_code == 202
    return session


async def ping(http: httpx.AsyncClient, session: dict[str, str]) -> httpx.Response:
    return await http.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=session)


@pytest.mark.parametrize(
    ("allowed", "local", "host", "verdict"),
    [
        ((), True, "127.0.0.1:8000", True),
        ((), True, "localhost", True),
        ((), True, "[::1]:8000", True),
        ((), True, "evil.example", False),
        ((), True, "evil.example:8000", False),
        ((), False, "evil.example", None),
        (("gw.example",), False, "gw.example:443", True),
        (("gw.example:8443",), False, "gw.example:8443", True),
        (("gw.example:8443",), False, "gw.example:9999", False),
        (("gw.example",), True, "localhost", False),
        (("*",), False, "anything", True),
    ],
)
def test_host_names(allowed: tuple[str, ...], local: bool, host: str, verdict: bool | None) -> None:
    assert HostNames(allowed, local).verdict(host) is verdict


async def test_a_foreign_host_is_refused_on_a_loopback_bind(gateway_files: GatewayFiles) -> None:
    secured(gateway_files)
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        refused = await http.get("/metrics", headers={"host": "rebound.example"})
        assert refused.status_code == 403 and refused.json()["error"]["data"]["code"] == "HOST_NOT_ALLOWED"
        assert (await http.get("/metrics", headers={"host": "localhost:8000"})).status_code == 200


async def test_configured_host_names_are_the_only_ones_served(gateway_files: GatewayFiles) -> None:
    secured(gateway_files)
    async with (
        asgi_gateway(gateway_files, GATEWAY_ALLOWED_HOSTS="gw.example") as served,
        served.http() as http,
    ):
        assert (await http.get("/health", headers={"host": "gw.example"})).status_code == 200
        assert (await http.get("/health", headers={"host": "127.0.0.1:8000"})).status_code == 403
        unauthenticated = await http.post("/mcp", json=INIT, headers={**ACCEPT_BOTH, "host": "gw.example"})
        assert unauthenticated.status_code == 401, unauthenticated.text
        challenge = unauthenticated.headers["www-authenticate"]
        assert 'resource_metadata="http://gw.example/.well-known/oauth-protected-resource/mcp"' in challenge


async def test_a_spoofed_host_never_names_the_metadata_on_an_open_bind(gateway_files: GatewayFiles) -> None:
    secured(gateway_files)
    async with asgi_gateway(gateway_files, GATEWAY_HTTP_HOST="0.0.0.0") as served, served.http() as http:
        spoofed = {"host": "attacker.example"}
        refused = await http.post("/mcp", json=INIT, headers={**ACCEPT_BOTH, **spoofed})
        assert refused.status_code == 401
        assert "attacker.example" not in refused.headers["www-authenticate"]
        assert "resource_metadata" not in refused.headers["www-authenticate"]
        document = await http.get("/.well-known/oauth-protected-resource/mcp", headers=spoofed)
        assert document.status_code == 404 and "GATEWAY_PUBLIC_URL" in document.json()["error"]
    async with (
        asgi_gateway(
            gateway_files, GATEWAY_HTTP_HOST="0.0.0.0", GATEWAY_PUBLIC_URL="https://gw.example"
        ) as served,
        served.http() as http,
    ):
        document = await http.get("/.well-known/oauth-protected-resource/mcp", headers=spoofed)
        assert document.json()["resource"] == "https://gw.example/mcp"


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "DELETE"])
async def test_an_unauthenticated_request_never_ends_a_session(
    gateway_files: GatewayFiles, method: str
) -> None:
    secured(gateway_files)
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        session = await open_session(http)
        stranger = {"mcp-session-id": session["mcp-session-id"], "accept": "text/event-stream"}
        await http.request(method, "/mcp", headers=stranger)
        answer = await ping(http, session)
        assert answer.status_code == 200, answer.text
        assert served.gateway.sessions.get(session["mcp-session-id"]) is not None


async def test_the_owners_delete_ends_the_session(gateway_files: GatewayFiles) -> None:
    secured(gateway_files)
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        session = await open_session(http)
        assert (await http.delete("/mcp", headers=session)).status_code in (200, 204)
        assert served.gateway.sessions.get(session["mcp-session-id"]) is None
        assert (await ping(http, session)).status_code == 404


async def test_metrics_token_guards_the_metrics(gateway_files: GatewayFiles) -> None:
    secured(gateway_files)
    async with (
        asgi_gateway(gateway_files, GATEWAY_METRICS_TOKEN=METRICS_TOKEN) as served,
        served.http() as http,
    ):
        for headers in ({}, bearer("wrong-token-of-some-length"), bearer(TOKEN)):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401 and "gateway_" not in refused.text
        allowed = await http.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert allowed.status_code == 200 and "gateway_build_info" in allowed.text
        as_json: Any = (await http.get("/metrics?format=json")).status_code
        assert as_json == 401


def test_metrics_token_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"GATEWAY_METRICS_TOKEN": "short-secret"})
    assert "short-secret" not in str(refused.value)
