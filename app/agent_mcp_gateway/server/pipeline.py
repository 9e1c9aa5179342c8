"""The MCP-level edge: every gateway tool call passes through here exactly once.

It resolves identity, opens the operation, and on the way out turns gateway failures into
JSON-RPC errors (fastmcp masks exceptions raised inside a tool into `isError` results; only an
`MCPError` raised from middleware keeps its code), turns anything unexpected into a clean
internal error, and writes the audit line and metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import mcp_types as mt
from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsError
from fastmcp.prompts.base import Prompt, PromptResult
from fastmcp.resources.base import Resource, ResourceResult
from fastmcp.resources.template import ResourceTemplate
from fastmcp.server.dependencies import bind_request_context, get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import Tool
from mcp import MCPError
from mcp.server.context import ServerRequestContext
from pydantic import ValidationError

from agent_mcp_gateway.access.credentials import PRINCIPAL_SCOPE_KEY, Principal
from agent_mcp_gateway.access.identity import AGENT_HEADER, checked_claim, resolve_agent
from agent_mcp_gateway.downstream.session import Kind
from agent_mcp_gateway.errors import DeniedByPolicy, GatewayError, InvalidAgentId, RateLimited
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import logs, tracing
from agent_mcp_gateway.observe.audit import AuditRecord
from agent_mcp_gateway.observe.metrics import ERRORS, RATE_LIMITED, bounded, operation_series, policy_series
from agent_mcp_gateway.operation import Operation, begin, end
from agent_mcp_gateway.server.aggregate import AggregateView
from agent_mcp_gateway.server.relay import ClientRelay
from agent_mcp_gateway.sessions.list_changed import session_key

log = logging.getLogger("agent_mcp_gateway")
C = TypeVar("C")

AGENT_TOOLS = frozenset({"list_servers", "get_server_tools", "execute_tool"})
DEBUG_TOOLS = frozenset({"get_gateway_status"})
GATEWAY_TOOLS = AGENT_TOOLS | DEBUG_TOOLS
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


@dataclass(frozen=True, slots=True)
class Caller:
    """What the transport says about who is asking: a claim, a session, a credential."""

    header_agent: str | None
    session_id: str | None
    credential: Principal | None


class GatewayMiddleware(Middleware):
    def __init__(self, gateway: Gateway, tools: dict[str, Tool]) -> None:
        self.gateway = gateway
        self.tools = tools
        self.rate_limits = gateway.rate_limits
        self.aggregate = AggregateView(gateway)
        # stdio with GATEWAY_AGENT: the process acts as that agent and nothing else.
        self.pinned = Principal(gateway.settings.agent, "pinned") if gateway.settings.agent else None

    async def on_notification(
        self, context: MiddlewareContext[mt.Notification[Any, Any]], call_next: CallNext[Any, Any]
    ) -> Any:
        """A client's changed roots reach the servers of its agent's (or session's) own
        downstream sessions, which then ask for them again (`DownstreamPool.roots_changed`)."""
        fastmcp_context = context.fastmcp_context
        if context.method == "notifications/roots/list_changed" and fastmcp_context is not None:
            self.gateway.pool.roots_changed(fastmcp_context.session_id)
        return await call_next(context)

    # --- tools -----------------------------------------------------------------------------

    async def on_call_tool(
        self,
        context: MiddlewareContext[mt.CallToolRequestParams],
        call_next: CallNext[mt.CallToolRequestParams, Any],
    ) -> Any:
        name = context.message.name
        arguments = context.message.arguments or {}
        caller = self._caller()
        claim = arguments.get("agent_id") if name in GATEWAY_TOOLS else None
        if self._aggregate(caller, claim):
            async with self._operation("tools/call", caller, f"tools/call {name}") as op:
                op.tool = _text(name)
                await self._identify(op, caller, None)
                relay = _relay(context)
                return await self.aggregate.call_tool(op, name, arguments, relay)
        tool = self.tools.get(name)
        if tool is None:
            return await call_next(context)
        async with self._operation(name, caller, f"tools/call {name}") as op:
            op.server = _text(arguments.get("server"))
            op.tool = _text(arguments.get("tool"))
            if name in AGENT_TOOLS:
                await self._identify(op, caller, arguments.get("agent_id"))
            # The gateway's own tool is run here, not looked up again by fastmcp: its lookup
            # (providers gathered in a task group, transforms, visibility, auth) cost a fifth
            # of the worker's CPU on a `list_servers` call (py-spy), for tools that use none.
            return await tool.run(arguments)

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of the tool `name` as the caller's tools/list shows it (None when it
        shows none), for the SDK's check of a 2026-07-28 call's `Mcp-Param-*` headers. Without
        it the SDK runs the caller's whole tools/list on every such call: in the aggregate view
        that listing was a third of the worker's CPU per call (py-spy)."""
        agent = self._peek(self._caller(), None)
        if agent is not None and self.gateway.config.rules.view_of(agent) == "aggregate":
            routed = self.gateway.catalog(agent).tool(name)
            return routed.item.input_schema if routed is not None else None
        tool = self.tools.get(name)
        return tool.parameters if tool is not None else None

    async def on_list_tools(
        self,
        context: MiddlewareContext[mt.ListToolsRequest],
        call_next: CallNext[mt.ListToolsRequest, Sequence[Tool]],
    ) -> Sequence[Tool]:
        return await self._listing(context, call_next, "tools/list", "tools", self.aggregate.list_tools)

    # --- prompts and resources (aggregate view only; the discovery view has none) ----------

    async def on_list_prompts(
        self,
        context: MiddlewareContext[mt.ListPromptsRequest],
        call_next: CallNext[mt.ListPromptsRequest, Sequence[Prompt]],
    ) -> Sequence[Prompt]:
        return await self._listing(context, call_next, "prompts/list", "prompts", self.aggregate.list_prompts)

    async def on_get_prompt(
        self,
        context: MiddlewareContext[mt.GetPromptRequestParams],
        call_next: CallNext[mt.GetPromptRequestParams, PromptResult],
    ) -> PromptResult:
        caller = self._caller()
        if not self._aggregate(caller, None):
            return await call_next(context)
        async with self._operation("prompts/get", caller) as op:
            op.tool = _text(context.message.name)
            await self._identify(op, caller, None)
            return await self.aggregate.get_prompt(
                op, context.message.name, context.message.arguments, _relay(context)
            )

    async def on_list_resources(
        self,
        context: MiddlewareContext[mt.ListResourcesRequest],
        call_next: CallNext[mt.ListResourcesRequest, Sequence[Resource]],
    ) -> Sequence[Resource]:
        listing = self.aggregate.list_resources
        return await self._listing(context, call_next, "resources/list", "resources", listing)

    async def on_list_resource_templates(
        self,
        context: MiddlewareContext[mt.ListResourceTemplatesRequest],
        call_next: CallNext[mt.ListResourceTemplatesRequest, Sequence[ResourceTemplate]],
    ) -> Sequence[ResourceTemplate]:
        listing = self.aggregate.list_templates
        return await self._listing(context, call_next, "resources/templates/list", "resources", listing)

    async def _listing(
        self,
        context: MiddlewareContext[Any],
        call_next: CallNext[Any, Sequence[C]],
        method: str,
        kind: Kind,
        listing: Callable[[Operation], Awaitable[list[C]]],
    ) -> Sequence[C]:
        """A list request: the gateway's own list in the discovery view, the agent's catalog
        in the aggregate view; either way the session is noted for `list_changed`."""
        caller = self._caller()
        agent = self._peek(caller, None)
        if agent is None or self.gateway.config.rules.view_of(agent) != "aggregate":
            items = await call_next(context)
            if agent is not None:
                self._shown(context, caller, agent, kind)
            return items
        async with self._operation(method, caller) as op:
            await self._identify(op, caller, None, charge=False)
            self._shown(context, caller, op.agent_id, kind)
            return await listing(op)

    async def on_read_resource(
        self,
        context: MiddlewareContext[mt.ReadResourceRequestParams],
        call_next: CallNext[mt.ReadResourceRequestParams, ResourceResult],
    ) -> ResourceResult:
        caller = self._caller()
        if not self._aggregate(caller, None):
            return await call_next(context)
        async with self._operation("resources/read", caller) as op:
            uri = str(context.message.uri)
            op.tool = _text(uri)
            await self._identify(op, caller, None)
            return await self.aggregate.read_resource(op, uri, _relay(context))

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: mt.SubscribeRequestParams
    ) -> mt.EmptyResult:
        """`resources/subscribe` (a low-level handler: fastmcp routes no middleware to it)."""
        with bind_request_context(ctx):
            caller = self._caller()
            if not self._aggregate(caller, None):
                raise MCPError(METHOD_NOT_FOUND, "Method not found")
            async with self._operation("resources/subscribe", caller) as op:
                uri = str(params.uri)
                op.tool = _text(uri)
                await self._identify(op, caller, None)
                await self.aggregate.subscribe(
                    op, uri, session_key(caller.session_id, ctx.session), ctx.session
                )
        return mt.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: mt.UnsubscribeRequestParams
    ) -> mt.EmptyResult:
        with bind_request_context(ctx):
            caller = self._caller()
            if not self._aggregate(caller, None):
                raise MCPError(METHOD_NOT_FOUND, "Method not found")
            async with self._operation("resources/unsubscribe", caller) as op:
                uri = str(params.uri)
                op.tool = _text(uri)
                await self._identify(op, caller, None, charge=False)
                await self.aggregate.unsubscribe(op, uri, session_key(caller.session_id, ctx.session))
        return mt.EmptyResult()

    async def complete(
        self,
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
    ) -> mt.Completion | None:
        """`completion/complete` (fastmcp calls its completion handler outside the middleware)."""
        caller = self._caller()
        if not self._aggregate(caller, None):
            return None
        async with self._operation("completion/complete", caller) as op:
            await self._identify(op, caller, None)
            return await self.aggregate.complete(op, ref, argument, context)

    # --- identity, the operation and its record ---------------------------------------------

    def _caller(self) -> Caller:
        header_agent, session_id, credential = _http_identity()
        return Caller(header_agent, session_id, credential or self.pinned)

    def _peek(self, caller: Caller, claim: object) -> str | None:
        """The agent a request would act as, without binding its session or charging a limit:
        enough to choose the view. None when it names none; `_identify` then says why."""
        if caller.credential is not None:
            return caller.credential.agent_id
        claimed = claim if isinstance(claim, str) and claim else caller.header_agent
        if not claimed and caller.session_id:
            session = self.gateway.sessions.get(caller.session_id)
            claimed = session.agent_id if session is not None else None
        try:
            return self.gateway.engine.resolve_agent(claimed)
        except InvalidAgentId:
            return None

    def _aggregate(self, caller: Caller, claim: object) -> bool:
        agent = self._peek(caller, claim)
        return agent is not None and self.gateway.config.rules.view_of(agent) == "aggregate"

    def _shown(self, context: MiddlewareContext[Any], caller: Caller, agent_id: str, kind: Kind) -> None:
        fastmcp_context = context.fastmcp_context
        request = fastmcp_context.request_context if fastmcp_context is not None else None
        if request is not None:
            key = session_key(caller.session_id, request.session)
            self.gateway.list_changed.shown(key, request.session, agent_id, kind)

    @asynccontextmanager
    async def _operation(
        self, name: str, caller: Caller, span_name: str | None = None
    ) -> AsyncIterator[Operation]:
        """One audited operation: failures become JSON-RPC errors, and every outcome is
        recorded (audit line, metrics) exactly once."""
        request_id = logs.request_id.get() or logs.new_request_id()
        logs.request_id.set(request_id)
        op = Operation(name, request_id, caller.session_id)
        token = begin(op)
        span = tracing.begin_operation(op)
        if span_name is not None:
            tracing.name_operation(span, span_name)
        started = time.perf_counter()
        try:
            yield op
        except Exception as exc:
            raise self._fail(op, _unwrap(exc)) from None
        finally:
            self._record(op, time.perf_counter() - started)
            tracing.end_operation(span, op)
            end(token)

    async def _identify(self, op: Operation, caller: Caller, agent_id: object, charge: bool = True) -> None:
        """Settle who the operation acts as, then charge it to that agent's rate limit."""
        header_agent = caller.header_agent
        if isinstance(header_agent, str) or isinstance(agent_id, str):
            op.claimed_agent_id = _text(agent_id) or _text(header_agent)
        claimed = checked_claim(agent_id, header_agent)
        session = self.gateway.sessions.get(op.session_id) if op.session_id else None
        snapshot = self.gateway.snapshot
        principal = resolve_agent(snapshot.engine, claimed, caller.credential, session)
        op.agent_id, op.auth, op.credential = principal.agent_id, principal.method, principal.fingerprint
        if charge:
            rules = snapshot.config.rules.agents.get(principal.agent_id)
            await self.rate_limits.charge(principal.agent_id, rules.rate_limit if rules else None)

    def _fail(self, op: Operation, exc: BaseException) -> MCPError:
        if isinstance(exc, GatewayError):
            denied = isinstance(exc, DeniedByPolicy | InvalidAgentId | RateLimited)
            op.decision = "DENY" if denied else "ERROR"
            op.error_code = exc.name
            if isinstance(exc, DeniedByPolicy):
                op.rule = exc.fields["rule"]
            elif isinstance(exc, RateLimited):
                op.rule = "rate_limit"
                RATE_LIMITED.labels(bounded(op.agent_id, self.gateway.config.rules.agents)).inc()
            return exc.to_mcp_error()
        op.decision = "ERROR"
        if isinstance(exc, ValidationError | ArgumentsError):
            op.error_code = "INVALID_PARAMS"
            return MCPError(INVALID_PARAMS, _invalid_arguments(op.name, exc))
        if isinstance(exc, MCPError):
            if op.error_code is None:
                op.error_code = f"JSONRPC_{exc.code}"
            else:
                op.decision = "DENY"  # refused by policy, told as unknown (see aggregate.py)
            return exc
        op.error_code = "INTERNAL_ERROR"
        log.exception("gateway operation failed", extra={"operation": op.name})
        return MCPError(
            INTERNAL_ERROR,
            f"The gateway hit an internal error; its log has details under request id {op.request_id}.",
        )

    def _record(self, op: Operation, seconds: float) -> None:
        snapshot = self.gateway.snapshot
        agent = bounded(op.agent_id, snapshot.config.rules.agents)
        server = bounded(op.server, snapshot.config.servers)
        count, duration = operation_series(op.name, agent, server, op.decision)
        count.inc()
        duration.observe(seconds)
        if op.rule is not None:
            policy_series(agent, "DENY" if op.error_code == "DENIED_BY_POLICY" else "ALLOW").inc()
        if op.error_code is not None:
            ERRORS.labels(op.error_code).inc()
        self.gateway.audit.write(
            AuditRecord(
                agent_id=op.agent_id or None,
                operation=op.name,
                server=op.server,
                tool=op.tool,
                decision=op.decision,
                rule=op.rule,
                error_code=op.error_code,
                latency_ms=round(seconds * 1000, 3),
                session_id=op.session_id,
                request_id=op.request_id,
                auth=op.auth,
                credential=op.credential,
                claimed_agent_id=op.claimed_agent_id if op.claimed_agent_id != op.agent_id else None,
                trace_id=op.trace_id,
            )
        )


def _relay(context: MiddlewareContext[Any]) -> ClientRelay | None:
    fastmcp_context = context.fastmcp_context
    if fastmcp_context is None or fastmcp_context.request_context is None:
        return None
    return ClientRelay(fastmcp_context)


def _unwrap(exc: BaseException) -> BaseException:
    """The real failure behind fastmcp's ToolError and ValidationError wrappers."""
    while isinstance(exc, ToolError | ArgumentsError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _http_identity() -> tuple[str | None, str | None, Principal | None]:
    """The claimed agent, the session id and the verified credential of an HTTP request."""
    try:
        request = get_http_request()
    except RuntimeError:  # stdio: no HTTP request, no session binding
        return None, None, None
    return (
        request.headers.get(AGENT_HEADER),
        request.headers.get("mcp-session-id"),
        request.scope.get(PRINCIPAL_SCOPE_KEY),
    )


def _text(value: object) -> str | None:
    return value[:200] if isinstance(value, str) else None


def _invalid_arguments(tool: str, exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return f"Invalid arguments for {tool}: {problems}."
    return f"Invalid arguments for {tool}."
