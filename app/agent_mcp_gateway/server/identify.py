"""Identity and rate limits: settle who an open operation acts as, then charge it.

The agent was resolved once, when the view was chosen (`access.identity.resolve`); here that
answer is taken on by the operation, or its refusal raised inside it (so it is audited), the
session is bound to the agent on its first use, and the call is charged to that agent's limit
under the operation's snapshot.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from agent_mcp_gateway.access.identity import bind
from agent_mcp_gateway.access.ratelimit import RateLimits
from agent_mcp_gateway.server.call import Call, planned, text


class Identify(Middleware):
    def __init__(self, rate_limits: RateLimits) -> None:
        self.rate_limits = rate_limits

    async def __call__(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        call = planned(context)
        if call is not None and call.identify:
            await self.settle(call)
        return await call_next(context)

    async def settle(self, call: Call) -> None:
        op, facts, resolution = call.op, call.facts, call.resolution
        assert op is not None  # opened by `Operations`, the middleware above
        if isinstance(facts.header_agent, str) or isinstance(call.claim, str):
            op.claimed_agent_id = text(call.claim) or text(facts.header_agent)
        if resolution.refusal is not None:
            raise resolution.refusal
        principal = resolution.principal
        assert principal is not None
        bind(facts.session, principal.agent_id)
        op.agent_id, op.auth, op.credential = principal.agent_id, principal.method, principal.fingerprint
        rules = call.snapshot.config.rules.agents.get(principal.agent_id)
        await self.rate_limits.charge(
            principal.agent_id, rules.rate_limit if rules else None, cheap=call.cheap
        )
