"""View selection: what a request is, in the view its agent has.

The first of the pipeline's middlewares. It gathers the request's facts (from the edge, or made
here over stdio), resolves once who is asking under the configuration current now, and chooses:
the aggregate view (the agent's downstream tools, prompts and resources as the gateway's own), a
gateway tool of the discovery view, or fastmcp's own answer (the discovery view's lists). An
unknown tool is a `-32602` error in both views, as the MCP specification asks (fastmcp answers
it with an `isError` result). What the gateway serves itself goes on as a planned `Call`; the rest passes
through unplanned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import mcp_types as mt
from fastmcp.exceptions import NotFoundError
from fastmcp.prompts.base import Prompt, PromptResult
from fastmcp.resources.base import Resource, ResourceResult
from fastmcp.resources.template import ResourceTemplate
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import Tool
from mcp import MCPError

from agent_mcp_gateway.access.credentials import Principal
from agent_mcp_gateway.access.identity import RequestFacts, facts_of, resolve
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.protocol import INVALID_PARAMS, Kind
from agent_mcp_gateway.server.aggregate import AggregateView
from agent_mcp_gateway.server.call import Call, Planned, text
from agent_mcp_gateway.server.relay import ClientRelay
from agent_mcp_gateway.sessions.list_changed import session_key

C = TypeVar("C")
R = TypeVar("R")

AGENT_TOOLS = frozenset({"list_servers", "get_server_tools", "execute_tool"})
DEBUG_TOOLS = frozenset({"get_gateway_status"})
GATEWAY_TOOLS = AGENT_TOOLS | DEBUG_TOOLS
AGGREGATE_INSTRUCTIONS = (
    "This gateway fronts several MCP servers. Its tools, prompts and resources are theirs, named "
    "{server}__{name} (resources keep their URIs), limited to what your agent may use."
)


class ViewSelection(Middleware):
    def __init__(self, gateway: Gateway, tools: dict[str, Tool], aggregate: AggregateView) -> None:
        self.gateway = gateway
        self.tools = tools
        self.aggregate = aggregate
        # stdio with GATEWAY_AGENT: the process acts as that agent and nothing else.
        self.pinned = Principal(gateway.settings.agent, "pinned") if gateway.settings.agent else None

    def facts(self) -> RequestFacts:
        """The request's facts, with the configuration it is served under taken on first use:
        the edge's over HTTP, new ones per operation over stdio."""
        try:
            facts = facts_of(get_http_request().scope)
        except RuntimeError:  # stdio: no HTTP request, no session binding
            facts = RequestFacts()
        if facts.principal is None:
            facts.principal = self.pinned
        if facts.snapshot is None:
            facts.snapshot = self.gateway.snapshot
        return facts

    def plan(
        self, name: str, run: Callable[[Operation], Awaitable[Any]], claim: object = None, **details: Any
    ) -> Call | None:
        """The call to run in the aggregate view, or None when the caller does not have it."""
        facts = self.facts()
        call = self._call(facts, name, run, claim, **details)
        return call if self._aggregate(call) else None

    def plan_any(self, name: str, run: Callable[[Operation], Awaitable[Any]]) -> Call:
        """The call to run for an operation both views serve (`subscriptions/listen`)."""
        return self._call(self.facts(), name, run, None)

    def _call(
        self,
        facts: RequestFacts,
        name: str,
        run: Callable[[Operation], Awaitable[Any]],
        claim: object,
        **details: Any,
    ) -> Call:
        assert facts.snapshot is not None
        resolution = resolve(facts.snapshot.engine, facts, claim)
        return Call(name, facts, facts.snapshot, resolution, run, claim, **details)

    @staticmethod
    def _aggregate(call: Call) -> bool:
        agent = call.resolution.agent
        return agent is not None and call.snapshot.config.rules.view_of(agent) == "aggregate"

    # --- server/discover (2026-07-28) --------------------------------------------------------

    async def on_discover(
        self,
        context: MiddlewareContext[mt.DiscoverRequest],
        call_next: CallNext[mt.DiscoverRequest, mt.DiscoverResult | dict[str, Any]],
    ) -> mt.DiscoverResult | dict[str, Any]:
        """What the server offers, as the asking agent's view has it: the discovery view has
        tools only; the aggregate view has its own instructions and, besides the gateway's own
        extensions, those its servers declare (the first server's settings where two differ)."""
        result = await call_next(context)
        facts = self.facts()
        assert facts.snapshot is not None
        agent = resolve(facts.snapshot.engine, facts, None).agent
        if agent is None or not isinstance(result, mt.DiscoverResult):
            return result
        capabilities = result.capabilities
        if facts.snapshot.config.rules.view_of(agent) == "aggregate":
            own = capabilities.extensions or {}
            extensions = {**self.gateway.catalog(agent, facts.snapshot).extensions(), **own}
            capabilities = capabilities.model_copy(update={"extensions": extensions or None})
            update: dict[str, Any] = {"capabilities": capabilities, "instructions": AGGREGATE_INSTRUCTIONS}
            return result.model_copy(update=update)
        unserved = {"prompts": None, "resources": None, "completions": None}
        return result.model_copy(update={"capabilities": capabilities.model_copy(update=unserved)})

    # --- tools -----------------------------------------------------------------------------

    async def on_call_tool(
        self,
        context: MiddlewareContext[mt.CallToolRequestParams],
        call_next: CallNext[mt.CallToolRequestParams, Any],
    ) -> Any:
        name = context.message.name
        arguments = context.message.arguments or {}
        claim = arguments.get("agent_id") if name in GATEWAY_TOOLS else None

        async def aggregate(op: Operation) -> Any:
            return await self.aggregate.call_tool(op, name, arguments, _relay(context))

        call = self._call(self.facts(), "tools/call", aggregate, claim, tool=text(name))
        call.span_name = f"tools/call {name}"
        if self._aggregate(call):
            return await call_next(_planned(context, call))
        tool = self.tools.get(name)
        if tool is None:
            try:
                return await call_next(context)
            except NotFoundError:  # fastmcp would answer with an isError result
                raise MCPError(INVALID_PARAMS, f"Unknown tool: {name!r}") from None

        async def gateway_tool(op: Operation) -> Any:
            # The gateway's own tool is run here, not looked up again by fastmcp: its lookup
            # (providers gathered in a task group, transforms, visibility, auth) cost a fifth
            # of the worker's CPU on a `list_servers` call (py-spy), for tools that use none.
            return await tool.run(arguments)

        call.name, call.run, call.identify = name, gateway_tool, name in AGENT_TOOLS
        call.server, call.tool = text(arguments.get("server")), text(arguments.get("tool"))
        return await call_next(_planned(context, call))

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of the tool `name` as the caller's tools/list shows it (None when it
        shows none), for the SDK's check of a 2026-07-28 call's `Mcp-Param-*` headers. Without
        it the SDK runs the caller's whole tools/list on every such call: in the aggregate view
        that listing was a third of the worker's CPU per call (py-spy)."""
        facts = self.facts()
        assert facts.snapshot is not None
        agent = resolve(facts.snapshot.engine, facts, None).agent
        if agent is not None and facts.snapshot.config.rules.view_of(agent) == "aggregate":
            routed = self.gateway.catalog(agent, facts.snapshot).tool(name)
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

    async def on_get_prompt(
        self,
        context: MiddlewareContext[mt.GetPromptRequestParams],
        call_next: CallNext[mt.GetPromptRequestParams, PromptResult],
    ) -> PromptResult:
        message = context.message

        async def get(op: Operation) -> PromptResult:
            return await self.aggregate.get_prompt(op, message.name, message.arguments, _relay(context))

        call = self.plan("prompts/get", get, tool=text(message.name))
        return await call_next(context if call is None else _planned(context, call))

    async def on_read_resource(
        self,
        context: MiddlewareContext[mt.ReadResourceRequestParams],
        call_next: CallNext[mt.ReadResourceRequestParams, ResourceResult],
    ) -> ResourceResult:
        uri = str(context.message.uri)

        async def read(op: Operation) -> ResourceResult:
            return await self.aggregate.read_resource(op, uri, _relay(context))

        call = self.plan("resources/read", read, tool=text(uri))
        return await call_next(context if call is None else _planned(context, call))

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

        async def aggregate(op: Operation) -> list[C]:
            self._shown(context, call.facts, op.agent_id, kind)
            return await listing(op)

        call = self._call(self.facts(), method, aggregate, None, cheap=True)
        if self._aggregate(call):
            return await call_next(_planned(context, call))
        items = await call_next(context)
        if call.resolution.agent is not None:
            self._shown(context, call.facts, call.resolution.agent, kind)
        return items

    def _shown(self, context: MiddlewareContext[Any], facts: RequestFacts, agent_id: str, kind: Kind) -> None:
        fastmcp_context = context.fastmcp_context
        request = fastmcp_context.request_context if fastmcp_context is not None else None
        if request is not None:
            key = session_key(facts.session_id, request.session)
            self.gateway.list_changed.shown(key, request.session, agent_id, kind)


def _planned(context: MiddlewareContext[Any], call: Call) -> Planned[Any]:
    """`context` with `call` attached, for the middlewares below."""
    return Planned(**{field.name: getattr(context, field.name) for field in fields(context)}, call=call)


def _relay(context: MiddlewareContext[Any]) -> ClientRelay | None:
    fastmcp_context = context.fastmcp_context
    if fastmcp_context is None or fastmcp_context.request_context is None:
        return None
    return ClientRelay(fastmcp_context)
