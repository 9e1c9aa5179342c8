"""Identity: which configured agent a request acts as.

An explicit `agent_id` argument wins, then the `X-Agent-Id` header of an HTTP request, then the
policy's fallback for a missing id. Over HTTP a session is bound to the first agent it acts
as, so one session cannot switch identities mid-way.
"""

from __future__ import annotations

import re

from .config import AGENT_ID_PATTERN
from .errors import InvalidAgentId
from .policy import PolicyEngine
from .sessions import SessionRegistry

AGENT_HEADER = "x-agent-id"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


def resolve_agent(
    engine: PolicyEngine,
    agent_id: object,
    header_agent: str | None = None,
    session_id: str | None = None,
    sessions: SessionRegistry | None = None,
) -> str:
    if agent_id is not None and not isinstance(agent_id, str):
        raise InvalidAgentId("agent_id must be a string")
    claimed = agent_id or header_agent or None
    if claimed is not None and not _AGENT_ID.match(claimed):
        raise InvalidAgentId(f"agent_id must match {AGENT_ID_PATTERN}")
    session = sessions.get(session_id) if sessions is not None and session_id else None
    if claimed is None and session is not None and session.agent_id is not None:
        claimed = session.agent_id
    agent = engine.resolve_agent(claimed)
    if session is not None:
        if session.agent_id is None:
            session.agent_id = agent
        elif session.agent_id != agent:
            raise InvalidAgentId(
                f"this session is bound to agent '{session.agent_id}' and cannot act as '{agent}'"
            )
    return agent
