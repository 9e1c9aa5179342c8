"""Authentication: which agent a bearer credential names.

Two kinds of credential, both checked with fastmcp's `TokenVerifier` interface:
- API tokens: the rules file holds `agents.<id>.tokens`, SHA-256 hashes of random tokens, so
  a leaked rules file grants nothing; a presented token is hashed and compared in constant time.
- JWTs from an OAuth 2.1 authorization server (`auth.jwt`), verified by fastmcp's
  `JWTVerifier`; the claim named by `agent_claim` must name a configured agent.

An `Authenticator` is built from one rules snapshot and swapped with it on reload, so a token
removed from the rules stops working on the next request, also on sessions it opened.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.auth.providers.jwt import JWTVerifier

from agent_mcp_gateway.config import JwtConfig, RulesConfig

log = logging.getLogger("agent_mcp_gateway.auth")

Method = Literal["token", "jwt", "claim", "pinned"]
# Where the HTTP edge leaves the verified principal for the MCP layer (an ASGI scope key).
TOKEN_BYTES = 32  # 256 bits of randomness per API token
HASH_PREFIX = "sha256:"
CLOCK_LEEWAY = 60.0  # seconds of clock skew forgiven on a JWT's nbf and iat
DEFAULT_MAX_LIFETIME = 86_400.0  # GATEWAY_JWT_MAX_LIFETIME: the longest-lived JWT accepted


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as, how that was established, and a fingerprint of the credential
    (enough to tell credentials apart in an audit line, never enough to replay one)."""

    agent_id: str
    method: Method
    fingerprint: str | None = None
    expires_at: float | None = None  # a JWT's `exp`


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The `sha256:<hex>` line that goes into `agents.<id>.tokens`."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def fingerprint(credential: str) -> str:
    """The first 12 hex digits of the credential's SHA-256: for a token, the start of its
    configured hash, so an operator can tell which token acted."""
    return hashlib.sha256(credential.encode()).hexdigest()[:12]


class HashedTokenVerifier(TokenVerifier):
    """API tokens checked against their configured hashes.

    Every configured hash is compared, with `hmac.compare_digest` and without stopping at a
    match, so the time taken says nothing about which hash or how much of it matched.
    """

    def __init__(self, rules: RulesConfig) -> None:
        super().__init__()
        self._entries = tuple(
            (bytes.fromhex(digest.removeprefix(HASH_PREFIX)), agent_id)
            for agent_id, agent in rules.agents.items()
            for digest in agent.tokens
        )

    def __bool__(self) -> bool:
        return bool(self._entries)

    async def verify_token(self, token: str) -> AccessToken | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for digest, agent_id in self._entries:
            if hmac.compare_digest(digest, presented):
                found = agent_id
        if found is None:
            return None
        return AccessToken(token=fingerprint(token), client_id=found, scopes=[], subject=found)


def _jwt_verifiers(config: JwtConfig) -> tuple[JWTVerifier, ...]:
    # fastmcp's verifier accepts one algorithm; one verifier per allowed algorithm.
    audience = config.audience if isinstance(config.audience, str) else list(config.audience)
    return tuple(
        JWTVerifier(
            public_key=config.public_key,
            jwks_uri=config.jwks_uri,
            issuer=config.issuer,
            audience=audience,
            algorithm=algorithm,
        )
        for algorithm in config.algorithms
    )


def _instant(value: Any) -> float | None:
    """A NumericDate claim as seconds, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def time_problem(claims: Mapping[str, Any], now: float, max_lifetime: float) -> str | None:
    """Why a verified JWT's time claims make it unacceptable now, or None.

    fastmcp's verifier checks `exp` only when present and ignores `nbf` and `iat`, so a token
    without `exp` (or with `exp` far away) would be accepted forever: `exp` is required and no
    further than `max_lifetime` ahead, `nbf` and `iat` may not lie in the future (beyond a small
    leeway), and `exp - iat` may not exceed `max_lifetime` either.
    """
    exp = _instant(claims.get("exp"))
    if exp is None:
        return "no valid exp claim"
    if exp <= now:
        return "expired"
    if exp - now > max_lifetime:
        return "expires further ahead than the maximum lifetime"
    for name in ("nbf", "iat"):
        if name not in claims:
            continue
        at = _instant(claims[name])
        if at is None:
            return f"{name} is not a number"
        if at > now + CLOCK_LEEWAY:
            return f"{name} is in the future"
    iat = _instant(claims.get("iat"))
    if iat is not None and exp - iat > max_lifetime:
        return "lifetime exceeds the maximum"
    return None


class Authenticator:
    """The credentials one rules snapshot accepts."""

    def __init__(self, rules: RulesConfig, max_lifetime: float = DEFAULT_MAX_LIFETIME) -> None:
        self._max_lifetime = max_lifetime
        self._agents = frozenset(rules.agents)
        self._tokens = HashedTokenVerifier(rules)
        jwt = rules.auth.jwt
        self._jwt = _jwt_verifiers(jwt) if jwt else ()
        self._agent_claim = jwt.agent_claim if jwt else "sub"
        self.authorization_servers = jwt.authorization_servers if jwt else ()

    @property
    def enabled(self) -> bool:
        """Whether HTTP callers must present a credential."""
        return bool(self._tokens) or bool(self._jwt)

    async def authenticate(self, credential: str) -> Principal | None:
        """The agent `credential` names, or None when it names no configured agent."""
        if not credential or len(credential) > 16_384:
            return None
        if self._tokens:
            token = await self._tokens.verify_token(credential)
            if token is not None:
                return Principal(token.client_id, "token", token.token)
        for verifier in self._jwt:
            access = await verifier.verify_token(credential)
            if access is None:
                continue
            claims = access.claims or {}
            problem = time_problem(claims, time.time(), self._max_lifetime)
            if problem is not None:
                log.info("bearer JWT refused", extra={"reason": problem})
                return None
            agent = claims.get(self._agent_claim)
            if isinstance(agent, str) and agent in self._agents:
                expires = claims.get("exp")
                expires_at = float(expires) if isinstance(expires, int | float) else None
                return Principal(agent, "jwt", fingerprint(credential), expires_at)
            return None
        return None
