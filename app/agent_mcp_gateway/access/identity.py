"""Identity: which configured agent a request acts as.

A credential decides wherever one can be checked: over HTTP a bearer token or JWT (verified at
the edge, see `bearer.py`), over stdio `GATEWAY_AGENT` pinned for the whole process. A claim
(an `agent_id` argument or the `X-Agent-Id` header) that names another agent is refused. Only
where no credential is configured is the claim taken: HTTP on a loopback bind (or with
`GATEWAY_AUTH=none`), and stdio without `GATEWAY_AGENT`, where the local user is trusted.

A session belongs to the agent that opened it: it is bound on its first use and cannot act as
another agent afterwards.
"""

from __future__ import annotations

import re

from agent_mcp_gateway.access.credentials import Principal
from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.config import AGENT_ID_PATTERN, RulesConfig
from agent_mcp_gateway.errors import InvalidAgentId
from agent_mcp_gateway.sessions.registry import SessionRecord
from agent_mcp_gateway.settings import Settings

AGENT_HEADER = "x-agent-id"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


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
    """The principal a request acts as; raises INVALID_AGENT_ID when it may act as none."""
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
    if session is not None:
        if session.agent_id is None:
            session.agent_id = principal.agent_id
        elif session.agent_id != principal.agent_id:
            raise InvalidAgentId(
                f"this session belongs to agent '{session.agent_id}' and cannot act as '{principal.agent_id}'"
            )
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
