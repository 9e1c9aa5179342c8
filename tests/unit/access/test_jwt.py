"""JWT findings of the security review (SECURITY.md, "Forged or odd JWTs"): time claims, an
empty audience list, symmetric secrets in the rules file, and a JWT block the verifier would
refuse, each checked with real keys and signatures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastmcp.server.auth.providers.jwt import RSAKeyPair
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import ValidationError

from agent_mcp_gateway.access.credentials import CLOCK_LEEWAY, Authenticator, time_problem
from agent_mcp_gateway.config import ConfigError, RulesConfig, load
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.metrics import CONFIG_LAST_RELOAD_OK, CONFIG_RELOADS
from agent_mcp_gateway.settings import SettingsError, load_settings

ISSUER = "https://issuer.test"
AUDIENCE = "agent-mcp-gateway"
KEY = RSAKeyPair.generate()
SIGNING_KEY = RSAKey.import_key(KEY.private_key.get_secret_value())
EC_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\n"
    "q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n"
    "-----END PUBLIC KEY-----\n"
)


def jwt_block(**overrides: Any) -> dict[str, Any]:
    return {"issuer": ISSUER, "audience": AUDIENCE, "public_key": KEY.public_key, **overrides}


def rules(**jwt: Any) -> dict[str, Any]:
    return {"agents": {"builder": {"allow": {"servers": ["*"]}}}, "auth": {"jwt": jwt_block(**jwt)}}


def token(now: float, **claims: Any) -> str:
    """A correctly signed token for agent `builder`; `claims` replace the time claims (None drops one)."""
    payload = {"sub": "builder", "iss": ISSUER, "aud": AUDIENCE, "iat": int(now), "exp": int(now) + 600}
    payload.update(claims)
    return jwt.encode({"alg": "RS256"}, {k: v for k, v in payload.items() if v is not None}, SIGNING_KEY)


async def agent_of(credential: str, max_lifetime: float = 86_400) -> str | None:
    authenticator = Authenticator(RulesConfig.model_validate(rules()), max_lifetime)
    principal = await authenticator.authenticate(credential)
    return principal.agent_id if principal else None


async def test_a_well_formed_token_is_accepted() -> None:
    assert await agent_of(token(time.time())) == "builder"


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": None}, "no exp: it would never expire"),
        ({"exp": 1e300}, "exp centuries ahead"),
        ({"iat": None, "exp": int(time.time()) + 10 * 86_400}, "exp beyond the maximum lifetime"),
        ({"nbf": int(time.time()) + 3600}, "not valid before an hour from now"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 4000}, "issued in the future"),
        ({"iat": int(time.time()) - 5 * 86_400, "exp": int(time.time()) + 60}, "lifetime of five days"),
        ({"exp": "tomorrow"}, "exp not a number"),
    ],
)
async def test_tokens_with_bad_time_claims_are_refused(claims: dict[str, Any], why: str) -> None:
    assert await agent_of(token(time.time(), **claims)) is None, why


async def test_small_clock_skew_is_forgiven() -> None:
    now = time.time()
    skewed = token(now, iat=int(now + CLOCK_LEEWAY / 2), nbf=int(now + CLOCK_LEEWAY / 2))
    assert await agent_of(skewed) == "builder"


def test_time_problem_names_each_reason() -> None:
    now = 1_000_000.0
    assert time_problem({"exp": now + 10}, now, 100) is None
    assert time_problem({}, now, 100) == "no valid exp claim"
    assert time_problem({"exp": float("inf")}, now, 100) == "no valid exp claim"
    assert time_problem({"exp": True}, now, 100) == "no valid exp claim"
    assert time_problem({"exp": now - 1}, now, 100) == "expired"
    assert time_problem({"exp": now + 101}, now, 100) == "expires further ahead than the maximum lifetime"
    assert time_problem({"exp": now + 10, "nbf": now + 61}, now, 100) == "nbf is in the future"
    assert time_problem({"exp": now + 10, "iat": "x"}, now, 100) == "iat is not a number"
    assert time_problem({"exp": now + 10, "iat": now - 200}, now, 100) == "lifetime exceeds the maximum"


def test_max_lifetime_is_a_setting() -> None:
    assert load_settings({"GATEWAY_JWT_MAX_LIFETIME": "3600"}).jwt_max_lifetime == 3600
    with pytest.raises(SettingsError, match="GATEWAY_JWT_MAX_LIFETIME='0' is not valid"):
        load_settings({"GATEWAY_JWT_MAX_LIFETIME": "0"})


async def test_max_lifetime_setting_is_enforced() -> None:
    now = time.time()
    assert await agent_of(token(now, exp=int(now) + 7200), max_lifetime=3600) is None
    assert await agent_of(token(now, exp=int(now) + 1800), max_lifetime=3600) == "builder"


@pytest.mark.parametrize(
    ("jwt", "message"),
    [
        ({"audience": []}, "at least 1 item"),
        ({"audience": [""]}, "at least 1 character"),
        ({"algorithms": ["HS256"], "public_key": "a-shared-secret-of-enough-length-0123456789"}, "symmetric"),
        ({"algorithms": ["HS256"]}, "symmetric"),
        ({"algorithms": ["RS257"]}, "is not one of"),
        ({"public_key": "not a key"}, "not a PEM public key"),
        ({"algorithms": ["ES256"]}, "not a key for algorithm 'ES256'"),
    ],
)
def test_jwt_blocks_the_verifier_would_refuse_fail_validation(jwt: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RulesConfig.model_validate(rules(**jwt))


def test_an_ec_key_validates_for_es256() -> None:
    RulesConfig.model_validate(rules(algorithms=["ES256"], public_key=EC_PEM))


async def test_a_reload_to_a_jwt_block_the_verifier_refuses_is_counted_as_failed(tmp_path: Path) -> None:
    servers, rules_path = tmp_path / ".mcp.json", tmp_path / "rules.json"
    servers.write_text(json.dumps({"mcpServers": {}}))
    rules_path.write_text(json.dumps(rules()))
    gateway = Gateway(
        load(servers, rules_path), load_settings({"GATEWAY_AUDIT_LOG": str(tmp_path / "a.jsonl")})
    )
    failures = CONFIG_RELOADS.labels("failure")._value.get()
    rules_path.write_text(json.dumps(rules(algorithms=["RS257"])))
    with pytest.raises(ConfigError, match="RS257"):
        load(servers, rules_path)
    try:
        assert await gateway.reload("test") is False
        assert CONFIG_RELOADS.labels("failure")._value.get() == failures + 1
        assert CONFIG_LAST_RELOAD_OK._value.get() == 0
        assert gateway.reloads[-1].ok is False and "RS257" in (gateway.reloads[-1].error or "")
    finally:
        await gateway.close()
