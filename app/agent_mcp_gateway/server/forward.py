"""The one way a view reaches a downstream: policy decided once, the timeout, the call, the result.

Both views (the discovery view's `execute_tool` and the aggregate view's own names) forward
through here, so a call is admitted, timed and answered the same way whichever view the agent
has. Each policy decision is recorded once: on the operation (its rule, for the audit line) and
as the `policy_decided` span. A decision the aggregate catalog already made while resolving a
public name is passed in rather than made again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import mcp_types as mt
from fastmcp.tools.base import InputRequiredToolResult, ToolResult
from pydantic import BaseModel

from agent_mcp_gateway.access.policy import Decision
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.session import FIRST, Downstream, Round
from agent_mcp_gateway.errors import DeniedByPolicy, ToolNotFound
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.server.answering import answered
from agent_mcp_gateway.server.relay import ClientRelay

A = TypeVar("A", bound=BaseModel)
# One round sent to the downstream: the session, where its messages go, and the round.
Send = Callable[[Downstream, Relay | None, Round], Awaitable[A | mt.InputRequiredResult]]


class Forward:
    """Admission and calls to the downstream servers, for operations whose agent is settled."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _downstream(self, server: str, op: Operation, relay: ClientRelay | None) -> Downstream:
        """The downstream session that serves `op` on `server`: its agent's or its client
        session's under the server's isolation, started on first use (the one seam for choosing
        it; ServerUnavailable for an unknown server or one at its instance limit)."""
        return self.gateway.instance(server, op, relay)

    def decide(
        self,
        op: Operation,
        operation: str,
        server: str,
        tool: str | None = None,
        decision: Decision | None = None,
    ) -> Decision:
        """The policy decision for `op` on `server` (and `tool`), made now unless `decision`
        was made already under the operation's snapshot; recorded on `op` and as a span, and
        raised as DENIED_BY_POLICY when it denies."""
        op.server = server
        if decision is None:
            decision = self.gateway.pinned(op).engine.decide(op.agent_id, server, tool)
        op.rule = decision.rule
        tracing.policy_decided(op.agent_id, server, tool, decision.allowed, decision.rule)
        if not decision.allowed:
            raise DeniedByPolicy(op.agent_id, operation, server, tool, decision.rule)
        return decision

    def admit(
        self,
        op: Operation,
        operation: str,
        server: str,
        tool: str | None = None,
        decision: Decision | None = None,
        relay: ClientRelay | None = None,
    ) -> Downstream:
        """The downstream session `op` may use for `operation`, once policy allows it; what the
        server sends on it goes to `relay` (the caller) while the call runs."""
        self.decide(op, operation, server, tool, decision)
        return self._downstream(server, op, relay)

    def listing(self, op: Operation, operation: str, server: str) -> Downstream:
        """Where `op` reads `server`'s catalog once policy allows it: the agent's own session
        once that is up, else the shared one (no session is started just to list)."""
        self.decide(op, operation, server)
        return self.gateway.listing(server, op)

    def timeout_ms(self, downstream: Downstream, requested: int | None = None) -> int:
        """The caller's timeout, else the server's, else the gateway's default."""
        return requested or downstream.config.timeout_ms or self.gateway.settings.default_timeout_ms

    async def rounds(
        self,
        op: Operation,
        operation: str,
        server: str,
        relay: ClientRelay | None,
        send: Send[A],
        tool: str | None = None,
        decision: Decision | None = None,
    ) -> A | mt.InputRequiredResult:
        """One request that may ask its caller mid-way (`tools/call`, `prompts/get`,
        `resources/read`), sent to `server` by `send` once policy allows it. For a 2026-07-28
        caller this is one round (`server.held`): a retry continues the request it names, under
        policy decided again, and the server's questions end the round (the InputRequiredResult
        returned). For a handshake-era caller the questions of a 2026-07-28 server are asked on
        the call's own stream and the server retried until its result (`server.answering`)."""
        if relay is not None and relay.modern:
            self.decide(op, operation, server, tool, decision)

            async def start(held: Relay, first: Round) -> A | mt.InputRequiredResult:
                return await send(self._downstream(server, op, relay), held, first)

            return await self.gateway.held.run(op.agent_id, relay, start)
        downstream = self.admit(op, operation, server, tool, decision, relay)

        async def again(answers: dict[str, Any] | None, state: str | None) -> A | mt.InputRequiredResult:
            return await send(downstream, relay, Round(answers, state))

        outcome = await send(downstream, relay, FIRST)
        if isinstance(outcome, mt.InputRequiredResult):  # a 2026-07-28 server asks
            return await answered(relay, outcome, again)
        return outcome

    async def call_tool(
        self,
        op: Operation,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        relay: ClientRelay | None,
        timeout_ms: int | None = None,
        decision: Decision | None = None,
    ) -> ToolResult:
        """Call `tool` on `server` for `op` and hand its result back as the server gave it (or,
        to a 2026-07-28 caller, the questions it asks first)."""
        op.tool = tool

        async def send(
            downstream: Downstream, to: Relay | None, round: Round
        ) -> mt.CallToolResult | mt.InputRequiredResult:
            timeout, known = self.timeout_ms(downstream, timeout_ms), self.known(op, downstream, tool)
            return await downstream.call_tool(tool, arguments, timeout, to, known, round)

        result = await self.rounds(op, "execute_tool", server, relay, send, tool, decision)
        if isinstance(result, mt.InputRequiredResult):
            return InputRequiredToolResult(result)
        return ToolResult(
            content=result.content,
            structured_content=result.structured_content,
            meta=result.meta,
            is_error=result.is_error,
        )

    def known(self, op: Operation, downstream: Downstream, tool: str) -> Callable[[], None]:
        """The check that `tool` is listed, run by the downstream once the server is up (a
        server still starting has no list yet): a quarantined tool is refused as such."""

        def known() -> None:
            if tool not in downstream.tools:
                self.gateway.pins.refuse(op.agent_id, op.name, downstream.name, tool, downstream.owner)
                raise ToolNotFound(downstream.name, tool)

        return known
