"""Every request an agent makes is charged to its rate limit, once.

Planned operations are charged where their agent is settled (`identify.py`); this middleware
charges the rest: `ping`, `logging/setLevel`, `server/discover`, the discovery view's lists and
whatever else fastmcp answers itself, to the agent the request resolves to. These are cheap:
they count against the agent's allowance for cheap requests (`CHEAP_FACTOR` times its limit,
`access/ratelimit.py`), so they cannot be sent without limit, yet a client's housekeeping does
not spend its calls. `initialize` is charged in full by the HTTP edge, which also caps the
agent's open sessions (`edge/quota.py`); over stdio there is one per process. A request that
names no usable agent is not charged here: the operation it leads to is refused.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from agent_mcp_gateway.access.identity import resolve
from agent_mcp_gateway.access.ratelimit import RateLimits
from agent_mcp_gateway.errors import RateLimited
from agent_mcp_gateway.observe.metrics import RATE_LIMITED, bounded
from agent_mcp_gateway.server.call import planned
from agent_mcp_gateway.server.view import ViewSelection

CHARGED_ELSEWHERE = frozenset({"initialize"})


class ChargeUnplanned(Middleware):
    def __init__(self, view: ViewSelection, rate_limits: RateLimits) -> None:
        self.view = view
        self.rate_limits = rate_limits

    async def on_request(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        if planned(context) is None and context.method not in CHARGED_ELSEWHERE:
            await self._charge()
        return await call_next(context)

    async def _charge(self) -> None:
        facts = self.view.facts()
        snapshot = facts.snapshot
        assert snapshot is not None  # taken by `facts()`
        principal = resolve(snapshot.engine, facts, None).principal
        if principal is None:
            return
        agents = snapshot.config.rules.agents
        rules = agents.get(principal.agent_id)
        try:
            await self.rate_limits.charge(principal.agent_id, rules.rate_limit if rules else None, cheap=True)
        except RateLimited as refused:
            RATE_LIMITED.labels(bounded(principal.agent_id, agents)).inc()
            raise refused.to_mcp_error() from None
