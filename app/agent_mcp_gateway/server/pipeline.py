"""The MCP side's middlewares, one per concern, and the order they run in.

Every request passes `ViewSelection` (what it is, in the view its agent has: `view.py`); a
request the gateway serves itself then passes `Operations` (the audited operation and its
failures: `operations.py`), `Identify` (who it acts as, and its rate limit: `identify.py`) and
`Dispatch` (the work). Requests fastmcp answers itself pass through unplanned.

The requests fastmcp routes no middleware to (`resources/subscribe` and `unsubscribe`,
`completion/complete`, `subscriptions/listen`) are planned here and run through the same chain.
"""

from __future__ import annotations

from typing import Any

import mcp_types as mt
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import Tool
from mcp import MCPError
from mcp.server.context import ServerRequestContext

from agent_mcp_gateway.compat import bind_request_context
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.record import Recorder
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.protocol import INVALID_REQUEST, METHOD_NOT_FOUND
from agent_mcp_gateway.server.aggregate import AggregateView
from agent_mcp_gateway.server.call import Call, Planned, planned, text
from agent_mcp_gateway.server.charge import ChargeUnplanned
from agent_mcp_gateway.server.identify import Identify
from agent_mcp_gateway.server.operations import Operations
from agent_mcp_gateway.server.view import ViewSelection
from agent_mcp_gateway.sessions.list_changed import session_key
from agent_mcp_gateway.sessions.listen import ListenStream


class Dispatch(Middleware):
    """The end of the chain for a planned call: run it in its open operation."""

    async def __call__(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        if planned(context) is None:
            return await call_next(context)
        return await _dispatch(context)


async def _dispatch(context: MiddlewareContext[Any]) -> Any:
    call = planned(context)
    assert call is not None and call.op is not None
    return await call.run(call.op)


class RootsChanged(Middleware):
    """A client's changed roots reach the servers of its agent's (or session's) own downstream
    sessions, which then ask for them again (`DownstreamPool.roots_changed`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def on_notification(
        self, context: MiddlewareContext[mt.Notification[Any, Any]], call_next: CallNext[Any, Any]
    ) -> Any:
        fastmcp_context = context.fastmcp_context
        if context.method == "notifications/roots/list_changed" and fastmcp_context is not None:
            self.gateway.pool.roots_changed(fastmcp_context.session_id)
        return await call_next(context)


class Pipeline:
    """The gateway's middlewares in order, and its handlers for the requests outside them."""

    def __init__(self, gateway: Gateway, tools: dict[str, Tool]) -> None:
        self.gateway = gateway
        self.aggregate = AggregateView(gateway)
        self.view = ViewSelection(gateway, tools, self.aggregate)
        self.middlewares: list[Middleware] = [
            self.view,
            Operations(Recorder(gateway.audit)),
            RootsChanged(gateway),
            ChargeUnplanned(self.view, gateway.rate_limits),
            Identify(gateway.rate_limits),
            Dispatch(),
        ]

    async def _run(self, method: str, message: Any, call: Call) -> Any:
        """`call` through the middlewares between the view and `Dispatch`, as fastmcp would."""
        call_next: CallNext[Any, Any] = _dispatch
        for middleware in reversed(self.middlewares[1:-1]):
            call_next = _bound(middleware, call_next)
        return await call_next(Planned(message=message, method=method, call=call))

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: mt.SubscribeRequestParams
    ) -> mt.EmptyResult:
        """`resources/subscribe` (a low-level handler: fastmcp routes no middleware to it)."""
        uri = str(params.uri)
        with bind_request_context(ctx):

            async def subscribe(op: Operation) -> None:
                key = session_key(op.session_id, ctx.session)
                await self.aggregate.subscribe(op, uri, key, ctx.session.send_resource_updated)

            call = self.view.plan("resources/subscribe", subscribe, tool=text(uri))
            if call is None:
                raise MCPError(METHOD_NOT_FOUND, "Method not found")
            await self._run("resources/subscribe", params, call)
        return mt.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: mt.UnsubscribeRequestParams
    ) -> mt.EmptyResult:
        uri = str(params.uri)
        with bind_request_context(ctx):

            async def unsubscribe(op: Operation) -> None:
                await self.aggregate.unsubscribe(op, uri, session_key(op.session_id, ctx.session))

            call = self.view.plan("resources/unsubscribe", unsubscribe, tool=text(uri))
            if call is None:
                raise MCPError(METHOD_NOT_FOUND, "Method not found")
            await self._run("resources/unsubscribe", params, call)
        return mt.EmptyResult()

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: mt.SubscriptionsListenRequestParams
    ) -> mt.SubscriptionsListenResult:
        """`subscriptions/listen` (2026-07-28; a low-level handler): opened as an audited
        operation of the agent it acts as, then served for as long as the client listens."""
        request_id = ctx.request_id
        if request_id is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        with bind_request_context(ctx):

            async def listen(op: Operation) -> ListenStream:
                return await self.aggregate.listen(op, params.notifications)

            call = self.view.plan_any("subscriptions/listen", listen)
            stream: ListenStream = await self._run("subscriptions/listen", params, call)
        try:
            return await stream.serve(ctx.session, request_id)
        finally:
            await self.aggregate.unlisten(stream)

    async def complete(
        self,
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
    ) -> mt.Completion | None:
        """`completion/complete` (fastmcp calls its completion handler outside the middleware)."""

        async def complete(op: Operation) -> mt.Completion | None:
            return await self.aggregate.complete(op, ref, argument, context)

        call = self.view.plan("completion/complete", complete)
        if call is None:
            return None
        result: mt.Completion | None = await self._run("completion/complete", argument, call)
        return result


def _bound(middleware: Middleware, call_next: CallNext[Any, Any]) -> CallNext[Any, Any]:
    async def run(context: MiddlewareContext[Any]) -> Any:
        return await middleware(context, call_next)

    return run
