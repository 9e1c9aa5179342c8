"""Credentials decide the agent: tokens compared in full, one agent per token hash, JWTs checked
against a key or a JWKS endpoint, and (a property) no claim, header or session makes a request
act as another agent than its credential's. The same through a real gateway is in
tests/process/test_auth.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from typing import Any

import pytest
from fastmcp.server.auth.providers.jwt import RSAKeyPair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_mcp_gateway.access.credentials import Authenticator, token_hash
from agent_mcp_gateway.access.identity import RequestFacts, checked_claim, resolve, resolve_agent
from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.config import RulesConfig
from agent_mcp_gateway.errors import InvalidAgentId

ISSUER = "https://issuer.test"
AUDIENCE = "agent-mcp-gateway"


class Credentials:
    """Tokens for two agents, a signing key and JWTs of every kind the gateway must refuse."""

    def __init__(self) -> None:
        self.researcher = secrets.token_urlsafe(32)
        self.builder = secrets.token_urlsafe(32)
        self.revocable = secrets.token_urlsafe(32)
        self.key = RSAKeyPair.generate()
        self.foreign_key = RSAKeyPair.generate()

    def jwt(self, subject: str = "builder", **overrides: Any) -> str:
        key = overrides.pop("key", self.key)
        options = {"issuer": ISSUER, "audience": AUDIENCE, "expires_in_seconds": 600, **overrides}
        return key.create_token(subject=subject, **options)

    def rules(self, *, with_revocable: bool = True) -> dict[str, Any]:
        researcher_tokens = [token_hash(self.researcher)]
        if with_revocable:
            researcher_tokens.append(token_hash(self.revocable))
        return {
            "agents": {
                "researcher": {
                    "allow": {"servers": ["echo"], "tools": {"echo": ["echo", "get_*"]}},
                    "tokens": researcher_tokens,
                    "rate_limit": "30/minute",
                },
                "builder": {"allow": {"servers": ["*"]}, "tokens": [token_hash(self.builder)]},
                "limited": {"allow": {"servers": ["echo"]}, "rate_limit": "3/minute"},
            },
            "auth": {
                "jwt": {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "public_key": self.key.public_key,
                    "authorization_servers": ["https://login.test"],
                }
            },
        }

    def all_secrets(self) -> list[str]:
        return [self.researcher, self.builder, self.revocable, self.jwt(), self.jwt("researcher")]


@pytest.fixture(scope="module")
def creds() -> Credentials:
    return Credentials()


# --- property: no request acts as an agent other than its credential's -----------------------------

AGENTS = ["a", "b", "c"]
TOKENS = {agent: [f"{agent}-token-{i}-{'x' * 20}" for i in range(2)] for agent in AGENTS}


def _rules() -> RulesConfig:
    return RulesConfig.model_validate(
        {
            "agents": {
                agent: {"allow": {"servers": ["*"]}, "tokens": [token_hash(t) for t in tokens]}
                for agent, tokens in TOKENS.items()
            }
        }
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    presented=st.one_of(st.sampled_from([t for ts in TOKENS.values() for t in ts]), st.text(max_size=40)),
    claim=st.one_of(st.none(), st.sampled_from([*AGENTS, "ghost"]), st.text(max_size=8)),
    header=st.one_of(st.none(), st.sampled_from(AGENTS)),
    session_agent=st.one_of(st.none(), st.sampled_from(AGENTS)),
)
async def test_property_the_credential_decides(
    presented: str, claim: str | None, header: str | None, session_agent: str | None
) -> None:
    from agent_mcp_gateway.sessions.registry import SessionRecord

    rules = _rules()
    owner = next((agent for agent, tokens in TOKENS.items() if presented in tokens), None)
    principal = await Authenticator(rules).authenticate(presented)
    if owner is None:
        assert principal is None
        return
    assert principal is not None and principal.agent_id == owner and principal.method == "token"
    session = SessionRecord("s", session_agent) if session_agent else None
    try:
        acting = resolve_agent(PolicyEngine(rules), checked_claim(claim, header), principal, session)
    except InvalidAgentId:
        return
    assert acting.agent_id == owner
    assert session is None or session.agent_id == owner


def test_tokens_are_compared_in_full(creds: Credentials) -> None:
    """A hash of a token is not a token, and neither is a prefix of one."""
    rules = RulesConfig.model_validate(creds.rules())
    authenticator = Authenticator(rules)
    assert asyncio.run(authenticator.authenticate(creds.researcher)).agent_id == "researcher"
    for wrong in (
        creds.researcher[:-1],
        creds.researcher + "x",
        hashlib.sha256(creds.researcher.encode()).hexdigest(),
        "",
    ):
        assert asyncio.run(authenticator.authenticate(wrong)) is None


def test_a_token_hash_names_one_agent(creds: Credentials) -> None:
    rules = creds.rules()
    rules["agents"]["builder"]["tokens"].append(token_hash(creds.researcher))
    with pytest.raises(ValueError, match="also a token of agent 'researcher'"):
        RulesConfig.model_validate(rules)


def test_jwt_verified_against_a_jwks_endpoint(creds: Credentials) -> None:
    """`jwks_uri` instead of a PEM: the key comes from a JWKS document served over HTTP."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from jwt.algorithms import RSAAlgorithm

    jwk = json.loads(RSAAlgorithm.to_jwk(RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(creds.key.public_key)))
    document = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rules = creds.rules()
        jwt_config = rules["auth"]["jwt"]
        jwt_config.pop("public_key")
        jwt_config["jwks_uri"] = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        authenticator = Authenticator(RulesConfig.model_validate(rules))
        signed = creds.key.create_token(subject="builder", issuer=ISSUER, audience=AUDIENCE, kid="k1")
        principal = asyncio.run(authenticator.authenticate(signed))
        assert principal is not None and (principal.agent_id, principal.method) == ("builder", "jwt")
        foreign = creds.foreign_key.create_token(
            subject="builder", issuer=ISSUER, audience=AUDIENCE, kid="k1"
        )
        assert asyncio.run(authenticator.authenticate(foreign)) is None
    finally:
        server.shutdown()


def test_the_caller_is_resolved_once_per_request() -> None:
    """The view, the input schema and the operation read one answer per request and claim; a
    refused request is still answered in the view of the agent it names, and binds nothing."""
    from agent_mcp_gateway.sessions.registry import SessionRecord

    engine = PolicyEngine(RulesConfig.model_validate({"agents": {"a": {}, "b": {}}}))
    owned = SessionRecord("s", "b")
    facts = RequestFacts(session_id="s", header_agent="a", session=owned)
    first = resolve(engine, facts, None)
    assert first.agent == "a" and first.principal is None
    assert first.refusal is not None and "belongs to agent 'b'" in first.refusal.message
    assert resolve(engine, facts, None) is first
    assert resolve(engine, facts, 5).refusal is not None
    fresh = SessionRecord("t")
    settled = resolve(engine, RequestFacts(session_id="t", session=fresh), "b")
    assert settled.agent == "b" and settled.principal is not None and settled.principal.method == "claim"
    assert fresh.agent_id is None  # bound by the operation that takes the answer on, not here
