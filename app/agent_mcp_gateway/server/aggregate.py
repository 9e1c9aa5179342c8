"""The aggregate view's operations: the agent's allowed downstream tools, prompts and resources
as if they were the gateway's own, with the same policy, audit and relay as `execute_tool`.

Listings are wrapped in fastmcp's component types only to pass through its list handlers: each
wrapper returns the downstream's definition unchanged (under its public name), so descriptions,
schemas and annotations reach the client as the server wrote them; lists are ordered by name (by
URI or template), so one view lists the same way every time. Results go back the same way.
A name the agent may not use is reported exactly like a name that does not exist: `-32602`
(Invalid Params) for an unknown tool, prompt or resource, as the 2026-07-28 specification asks
(SEP-2164 retired `-32002` for resources), in every protocol era.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types as mt
from fastmcp.prompts.base import InputRequiredPromptResult, Prompt, PromptResult
from fastmcp.resources.base import InputRequiredResourceResult, Resource, ResourceResult
from fastmcp.resources.template import ResourceTemplate
from fastmcp.tools.base import Tool, ToolResult
from mcp import MCPError

from agent_mcp_gateway.catalog import Catalog, Routed
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.pool import Owner
from agent_mcp_gateway.downstream.session import Downstream, Round
from agent_mcp_gateway.errors import DeniedByPolicy, GatewayError
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.protocol import INVALID_PARAMS
from agent_mcp_gateway.server.forward import Forward
from agent_mcp_gateway.server.relay import ClientRelay
from agent_mcp_gateway.sessions.listen import ListenStream
from agent_mcp_gateway.sessions.subscriptions import Notify


class ListedTool(Tool):
    definition: mt.Tool

    def to_mcp_tool(self, **overrides: Any) -> mt.Tool:
        return self.definition.model_copy(update={"name": self.name})


class ListedPrompt(Prompt):
    definition: mt.Prompt

    def to_mcp_prompt(self, **overrides: Any) -> mt.Prompt:
        return self.definition.model_copy(update={"name": self.name})


class ListedResource(Resource):
    definition: mt.Resource

    def to_mcp_resource(self, **overrides: Any) -> mt.Resource:
        return self.definition


class ListedTemplate(ResourceTemplate):
    definition: mt.ResourceTemplate

    def to_mcp_template(self, **overrides: Any) -> mt.ResourceTemplate:
        return self.definition


class RelayedPrompt(PromptResult):
    result: mt.GetPromptResult

    def to_mcp_prompt_result(self) -> mt.GetPromptResult:
        return self.result


class RelayedResource(ResourceResult):
    result: mt.ReadResourceResult

    def to_mcp_result(self, uri: Any) -> mt.ReadResourceResult:
        # What one agent may read is its own: never cached for others, whatever the server said.
        return self.result.model_copy(update={"cache_scope": "private"})


class AggregateView:
    """Plain methods on the gateway's state for an operation whose agent is settled."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.forward = Forward(gateway)

    async def _catalog(self, op: Operation) -> Catalog:
        """The agent's view once every server has had its first try at connecting, so a
        client that lists or calls right after start-up is not shown an empty catalog."""
        starting = [server.tried.wait() for server in self.gateway.pool if not server.tried.is_set()]
        if starting:
            tasks = [asyncio.ensure_future(wait) for wait in starting]
            await asyncio.wait(tasks, timeout=self.gateway.settings.connect_timeout)
            for task in tasks:
                task.cancel()
        return self.gateway.catalog(op.agent_id, self.gateway.pinned(op))

    async def list_tools(self, op: Operation) -> list[Tool]:
        return [
            ListedTool.model_construct(name=name, parameters=routed.item.input_schema, definition=routed.item)
            for name, routed in sorted((await self._catalog(op)).tools().items())
        ]

    async def list_prompts(self, op: Operation) -> list[Prompt]:
        return [
            ListedPrompt.model_construct(name=name, definition=routed.item)
            for name, routed in sorted((await self._catalog(op)).prompts().items())
        ]

    async def list_resources(self, op: Operation) -> list[Resource]:
        return [
            ListedResource.model_construct(name=routed.item.name, uri=uri, definition=routed.item)
            for uri, routed in sorted((await self._catalog(op)).resources().items())
        ]

    async def list_templates(self, op: Operation) -> list[ResourceTemplate]:
        return [
            ListedTemplate.model_construct(
                name=routed.item.name,
                uri_template=routed.item.uri_template,
                parameters={},
                definition=routed.item,
            )
            for routed in sorted((await self._catalog(op)).templates(), key=lambda routed: routed.name)
        ]

    async def call_tool(
        self, op: Operation, name: str, arguments: dict[str, Any], relay: ClientRelay | None
    ) -> ToolResult:
        routed = await self.route_tool(op, name)
        return await self.forward.call_tool(
            op, routed.server, routed.name, arguments, relay, decision=routed.decision
        )

    async def route_tool(self, op: Operation, name: str) -> Routed[mt.Tool]:
        """The tool a public name stands for, with the decision that allows it; an unknown
        name (or one the agent may not use) is INVALID_PARAMS."""
        routed = (await self._catalog(op)).tool(name)
        if routed is None:
            self._refuse(op, name)
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name!r}")
        return routed

    async def get_prompt(
        self, op: Operation, name: str, arguments: dict[str, str] | None, relay: ClientRelay | None
    ) -> PromptResult:
        """The prompt as its server renders it; a server that asks its caller first is answered
        the same way as in a tool call, in every pairing of eras (`Forward.rounds`)."""
        routed = (await self._catalog(op)).prompt(name)
        if routed is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name!r}")
        op.tool = routed.name

        async def send(
            downstream: Downstream, to: Relay | None, round: Round
        ) -> mt.GetPromptResult | mt.InputRequiredResult:
            timeout = self.forward.timeout_ms(downstream)
            return await downstream.get_prompt(routed.name, arguments, timeout, to, round)

        result = await self.forward.rounds(op, "prompts/get", routed.server, relay, send)
        if isinstance(result, mt.InputRequiredResult):
            return InputRequiredPromptResult(result)
        return RelayedPrompt.model_construct(messages=[], result=result)

    async def read_resource(self, op: Operation, uri: str, relay: ClientRelay | None) -> ResourceResult:
        """The resource as its server reads it; a server that asks its caller first is answered
        the same way as in a tool call, in every pairing of eras (`Forward.rounds`)."""
        server = await self._resource_owner(op, uri)

        async def send(
            downstream: Downstream, to: Relay | None, round: Round
        ) -> mt.ReadResourceResult | mt.InputRequiredResult:
            return await downstream.read_resource(uri, self.forward.timeout_ms(downstream), to, round)

        result = await self.forward.rounds(op, "resources/read", server, relay, send)
        if isinstance(result, mt.InputRequiredResult):
            return InputRequiredResourceResult(result)
        return RelayedResource.model_construct(contents=[], result=result)

    async def subscribe(self, op: Operation, uri: str, key: str, notify: Notify) -> None:
        """Subscribe the session or listen stream `key` to `uri`; `notify` tells it of updates."""
        downstream = await self._resource_server(op, uri, "resources/subscribe")
        server = downstream.name
        if not await downstream.supports_subscriptions():
            why = (
                f": server {server!r}, spoken to in {downstream.protocol}, offers none in that era"
                " (its protocol can be pinned to the handshake era in .mcp.json)"
                if downstream.modern
                else ""
            )
            raise MCPError(INVALID_PARAMS, f"Resource {uri!r} does not support subscriptions{why}.")
        subscriptions = self.gateway.subscriptions
        if subscriptions.add(key, notify, op.agent_id, server, uri, downstream.owner):
            try:
                await downstream.subscribe(uri, self.forward.timeout_ms(downstream))
            except BaseException:
                await subscriptions.remove(key, server, uri)
                raise

    async def listen(self, op: Operation, notifications: mt.SubscriptionFilter) -> ListenStream:
        """Open a listen stream for `op`'s agent: it watches the kinds asked for, and is
        subscribed to each URI the agent may read whose server offers subscriptions (the rest
        are left out of the acknowledgement, an unknown URI and a forbidden one alike)."""
        gateway = self.gateway
        stream = gateway.listens.open(op.agent_id, notifications)
        try:
            gateway.list_changed.watch(stream.key, op.agent_id, stream.kinds, stream.kind_changed)
            if gateway.pinned(op).config.rules.view_of(op.agent_id) == "aggregate":
                for uri in notifications.resource_subscriptions or ():
                    try:
                        await self.subscribe(op, uri, stream.key, stream.resource_updated)
                    except (MCPError, GatewayError):
                        continue
                    stream.uris.append(uri)
        except BaseException:
            await self.unlisten(stream)
            raise
        return stream

    async def unlisten(self, stream: ListenStream) -> None:
        """The stream ended: forget it and drop its subscriptions."""
        self.gateway.listens.discard(stream)
        self.gateway.list_changed.forget(stream.key)
        subscriptions = self.gateway.subscriptions
        for uri in stream.uris:
            server = subscriptions.server_of(stream.key, uri)
            if server is not None:
                await subscriptions.remove(stream.key, server, uri)

    async def unsubscribe(self, op: Operation, uri: str, key: str) -> None:
        server = self.gateway.subscriptions.server_of(key, uri)
        if server is not None:
            op.server = server
            await self.gateway.subscriptions.remove(key, server, uri)

    async def complete(
        self,
        op: Operation,
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
    ) -> mt.Completion | None:
        """Candidates from the server that owns the prompt or template; none for a reference
        the agent cannot use (as for one that does not exist)."""
        catalog = await self._catalog(op)
        target: mt.PromptReference | mt.ResourceTemplateReference
        if isinstance(ref, mt.PromptReference):
            routed = catalog.prompt(ref.name)
            if routed is None:
                return None
            server, target = routed.server, ref.model_copy(update={"name": routed.name})
            op.tool = routed.name
        else:
            owners = [t.server for t in catalog.templates() if t.item.uri_template == ref.uri]
            if not owners:
                return None
            server, target = owners[0], ref
            op.tool = ref.uri
        downstream = self.forward.admit(op, "completion/complete", server)
        result = await downstream.complete(target, argument, context, self.forward.timeout_ms(downstream))
        return result.completion

    def _refuse(self, op: Operation, name: str) -> None:
        """Record why a name is unknown to this agent when policy is the reason: the audit
        line says DENY and the rule, the caller hears only that the name is unknown. A
        quarantined tool the agent may use is refused as such (pins.py), as in execute_tool."""
        snapshot, pins = self.gateway.pinned(op), self.gateway.pins
        engine = snapshot.engine
        for server, tool in self.gateway.catalog(op.agent_id, snapshot).candidates(name, every=True):
            downstream = self.gateway.pool.listing(server, Owner(op.agent_id, op.session_id))
            if downstream is None:
                continue
            if tool not in downstream.tools:
                quarantined = pins.quarantined(server, tool, downstream.owner)
                if quarantined and engine.decide(op.agent_id, server, tool).allowed:
                    op.server, op.tool = server, tool
                    pins.refuse(op.agent_id, op.name, server, tool, downstream.owner)
                continue
            decision = engine.decide(op.agent_id, server, tool)
            if not decision.allowed:
                op.server, op.tool, op.rule = server, tool, decision.rule
                op.decision, op.error_code = "DENY", DeniedByPolicy.name
            return

    async def _resource_server(self, op: Operation, uri: str, operation: str) -> Downstream:
        return self.forward.admit(op, operation, await self._resource_owner(op, uri))

    async def _resource_owner(self, op: Operation, uri: str) -> str:
        """The server that serves `uri` in the agent's view (`-32602` when none does)."""
        server = (await self._catalog(op)).resource_server(uri)
        if server is None:
            raise MCPError(INVALID_PARAMS, f"Resource not found: {uri!r}", data={"uri": uri})
        return server
