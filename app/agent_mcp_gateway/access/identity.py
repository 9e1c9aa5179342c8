"""Identity: which configured agent a request acts as.

A credential decides wherever one can be checked: over HTTP a bearer token or JWT (verified at
the edge, see `bearer.py`), over stdio `GATEWAY_AGENT` pinned for the whole process. A claim
(an `agent_id` argument or the `X-Agent-Id` header) that names another agent is refused. Only
where no credential is configured is the claim taken: HTTP on a loopback bind (or with
`GATEWAY_AUTH=none`), and stdio without `GATEWAY_AGENT`, where the local user is trusted.

A session belongs to the agent that opened it: it is bound on its first use and cannot act as
another agent afterwards (`check_session`, the one rule both the edge and the MCP layer apply).

What a request says about its caller is gathered once, by the HTTP edge, into `RequestFacts` in
the ASGI scope (over stdio one is made per operation), and the agent it acts as is worked out
once from those facts (`Resolution`): the view, the rate limit, policy and the audit line all
read that one answer.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_mcp_gateway.access.credentials import Principal
from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.config import AGENT_ID_PATTERN, RulesConfig
from agent_mcp_gateway.errors import InvalidAgentId
from agent_mcp_gateway.sessions.registry import SessionRecord
from agent_mcp_gateway.settings import Settings

if TYPE_CHECKING:
    from agent_mcp_gateway.gateway import Snapshot

FACTS_SCOPE_KEY = "agent_mcp_gateway.facts"
_NOT_TEXT = "\0not-a-string"  # the cache key of a claim that is not a string (never an agent id)
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


@dataclass(slots=True)
class RequestFacts:
    """Who a request is from, as the transport tells it: written by the edge as it learns each
    fact (session, body, credential), read by every layer below. Over stdio only `principal`
    (the pinned agent) is known."""

    session_id: str | None = None
    client: str = "unknown"
    header_agent: str | None = None  # X-Agent-Id
    claimed_agent: str | None = None  # the header or the agent_id argument, for refusals' audit
    rpc_id: Any = None
    method: str | None = None
    message: dict[str, Any] | None = None  # the JSON-RPC message, parsed once by the edge
    principal: Principal | None = None  # the verified credential, when one is required
    session: SessionRecord | None = None  # the gateway's record of `session_id`, looked up once
    session_refused: bool = False  # the edge refused the session: it stays as it was
    snapshot: Snapshot | None = None  # the configuration the request is served under
    resolved: dict[str | None, Resolution] = field(default_factory=dict)  # by claim (`resolve`)


def facts_of(scope: MutableMapping[str, Any]) -> RequestFacts:
    """The request's facts, made by the first layer that asks (the edge's outermost one)."""
    found = scope.get(FACTS_SCOPE_KEY)
    if found is None:
        found = scope[FACTS_SCOPE_KEY] = RequestFacts()
    assert isinstance(found, RequestFacts)
    return found


@dataclass(frozen=True, slots=True)
class Resolution:
    """The agent a request acts as, worked out once: `agent` chooses the view (None when it
    names no usable agent); `principal` is the identity an operation takes on, or `refusal`
    says why it may take none. Nothing is bound or charged here."""

    agent: str | None
    principal: Principal | None
    refusal: InvalidAgentId | None


def resolve(engine: PolicyEngine, facts: RequestFacts, claim: object) -> Resolution:
    """What `facts` (and an `agent_id` argument `claim`) make of the caller, cached on the
    facts so the view, `input_schema` and the operation read one answer."""
    key = claim if isinstance(claim, str) or claim is None else _NOT_TEXT  # all refused alike
    found = facts.resolved.get(key)
    if found is None:
        found = facts.resolved[key] = _resolve(engine, facts, claim)
    return found


def _resolve(engine: PolicyEngine, facts: RequestFacts, claim: object) -> Resolution:
    credential, session = facts.principal, facts.session
    try:
        principal = _principal(engine, checked_claim(claim, facts.header_agent), credential, session)
        check_session(session, principal.agent_id)
    except InvalidAgentId as refusal:
        return Resolution(_view_agent(engine, facts, claim), None, refusal)
    return Resolution(principal.agent_id, principal, None)


def _view_agent(engine: PolicyEngine, facts: RequestFacts, claim: object) -> str | None:
    """The agent whose view a refused request is answered in: its credential's, else the one
    it names, else its session's (a refusal is still audited and told in that view)."""
    if facts.principal is not None:
        return facts.principal.agent_id
    claimed = claim if isinstance(claim, str) and claim else facts.header_agent
    if not claimed and facts.session is not None:
        claimed = facts.session.agent_id
    try:
        return engine.resolve_agent(claimed)
    except InvalidAgentId:
        return None


def checked_claim(agent_id: object, header_agent: str | None) -> str | None:
    """The agent id a request claims (argument first, then header), if well-formed."""
    if agent_id is not None and not isinstance(agent_id, str):
        raise InvalidAgentId("agent_id must be a string")
    claimed = agent_id or header_agent or None
    if claimed is not None and not _AGENT_ID.match(claimed):
        raise InvalidAgentId(f"agent_id must match {AGENT_ID_PATTERN}")
    return claimed


def resolve_agent(
    engine: PolicyEngine,
    claimed: str | None,
    credential: Principal | None,
    session: SessionRecord | None = None,
) -> Principal:
    """The principal a request acts as, its session bound to it; raises INVALID_AGENT_ID when
    it may act as none."""
    principal = _principal(engine, claimed, credential, session)
    bind(session, principal.agent_id)
    return principal


def bind(session: SessionRecord | None, agent_id: str) -> None:
    """Bind a session to the agent on its first use; raises INVALID_AGENT_ID if it is another's."""
    if session is not None:
        check_session(session, agent_id)
        if session.agent_id is None:
            session.agent_id = agent_id


def check_session(session: SessionRecord | None, agent_id: str) -> None:
    """Raise INVALID_AGENT_ID when `session` belongs to an agent other than `agent_id`."""
    if session is not None and session.agent_id is not None and session.agent_id != agent_id:
        raise InvalidAgentId(
            f"this session belongs to agent '{session.agent_id}' and cannot act as '{agent_id}'"
        )


def _principal(
    engine: PolicyEngine, claimed: str | None, credential: Principal | None, session: SessionRecord | None
) -> Principal:
    if credential is not None:
        if claimed is not None and claimed != credential.agent_id:
            raise InvalidAgentId(
                f"the credential belongs to agent '{credential.agent_id}' and cannot act as '{claimed}'"
            )
        principal = credential
    else:
        if claimed is None and session is not None:
            claimed = session.agent_id
        principal = Principal(engine.resolve_agent(claimed), "claim")
    return principal


def identity_problem(settings: Settings, rules: RulesConfig) -> str | None:
    """Why these rules cannot serve with these settings, in one sentence, or None.

    Checked at start-up and on every reload, so a reload can neither open a non-loopback HTTP
    service to unauthenticated claims nor drop the agent a stdio process is pinned to.
    """
    if settings.agent is not None and settings.agent not in rules.agents:
        return f"GATEWAY_AGENT names agent '{settings.agent}', which the rules file does not define"
    if (
        settings.transport == "http"
        and not settings.loopback_bind
        and settings.auth != "none"
        and not rules.credentials_configured
    ):
        return (
            f"GATEWAY_HTTP_HOST={settings.http_host} is not a loopback address and the rules file "
            "configures no credentials (agents.<id>.tokens or auth.jwt); add one, or set "
            "GATEWAY_AUTH=none to accept unauthenticated agent claims on this bind"
        )
    return None


def claims_warning(settings: Settings, rules: RulesConfig) -> str | None:
    """The warning to show when agent ids are taken on the caller's word."""
    if settings.transport == "http" and not rules.credentials_configured:
        return (
            "no credentials are configured: HTTP callers choose their agent by claim "
            "(agent_id / X-Agent-Id); configure agents.<id>.tokens or auth.jwt"
        )
    return None
