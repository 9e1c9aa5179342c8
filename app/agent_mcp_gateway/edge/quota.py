"""Opening a session costs the agent: `initialize` is charged to its rate limit, and an agent
may hold at most its `max_sessions` open sessions (`GATEWAY_MAX_SESSIONS_PER_AGENT` by
default), so one agent cannot take the SDK's 10,000 sessions from every other.

At the edge, before the SDK's session manager creates the session: refused there, no session
exists to clean up. The agent is the credential's, or on a loopback bind without credentials
the one the request names (a session opened without naming one is bound on its first call and
counted from then on).
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway.access.identity import RequestFacts, facts_of
from agent_mcp_gateway.edge.respond import error_response
from agent_mcp_gateway.errors import InvalidAgentId, RateLimited
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.metrics import RATE_LIMITED, bounded
from agent_mcp_gateway.observe.record import Recorder
from agent_mcp_gateway.protocol import MCP_PATHS

SESSIONS_RETRY_SECONDS = 60  # what a refused initialize is told to wait: sessions end by DELETE or TTL


class SessionQuota:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.recorder = Recorder(gateway.audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in MCP_PATHS:
            facts = facts_of(scope)
            if facts.method == "initialize" and facts.session_id is None:
                refusal = await self._admit(scope, facts)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, facts: RequestFacts) -> JSONResponse | None:
        snapshot = self.gateway.snapshot
        agent = _agent(self.gateway, facts)
        if agent is None:
            return None
        rules = snapshot.config.rules.agents.get(agent)
        try:
            await self.gateway.rate_limits.charge(agent, rules.rate_limit if rules else None)
            cap = (rules.max_sessions if rules else None) or self.gateway.settings.max_sessions_per_agent
            if self.gateway.sessions.count(agent) >= cap:
                raise RateLimited(agent, f"{cap} open sessions", SESSIONS_RETRY_SECONDS)
        except RateLimited as refused:
            RATE_LIMITED.labels(bounded(agent, snapshot.config.rules.agents)).inc()
            self.recorder.refused(agent, "initialize", refused, facts.session_id, logs.request_id.get())
            response = error_response(
                scope, 429, refused.message, refused.name, code=refused.code, **refused.fields
            )
            response.headers["Retry-After"] = str(refused.fields["retry_after"])
            return response
        return None


def _agent(gateway: Gateway, facts: RequestFacts) -> str | None:
    """Who opens the session: the credential's agent, else the one a claim names, if any."""
    if facts.principal is not None:
        return facts.principal.agent_id
    if gateway.snapshot.authenticator.enabled or not facts.header_agent:
        return None
    try:
        return gateway.snapshot.engine.resolve_agent(facts.header_agent)
    except InvalidAgentId:
        return None  # refused as such by the operation that follows
