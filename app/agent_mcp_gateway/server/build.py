"""The MCP server: the gateway tools on a FastMCP instance whose lifespan runs the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import mcp_types as mt
from fastmcp import FastMCP
from mcp.server.caching import CacheHint
from mcp.server.request_state import RequestStateSecurity

from agent_mcp_gateway import __version__, compat
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.reload import install_sighup, watch_config
from agent_mcp_gateway.server import tasks
from agent_mcp_gateway.server.discovery import GatewayTools, register_tools
from agent_mcp_gateway.server.pipeline import Pipeline

SERVER_NAME = "agent-mcp-gateway"
# 2026-07-28 clients may keep a list (and server/discover) this long; it is the agent's own
# (`private`), and a change reaches its `subscriptions/listen` stream at once.
LIST_TTL_MS = 30_000
LISTS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "server/discover")

INSTRUCTIONS = (
    "This gateway fronts several MCP servers. Find a tool with search_tools(query) (or "
    "list_servers, then get_server_tools(server)), then call it with execute_tool(server, tool, "
    "args). Pass your agent_id."
)


def build_server(
    gateway: Gateway,
    on_signal: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> FastMCP:
    """The gateway's MCP server. `on_signal` runs on SIGTERM and SIGINT: over stdio nothing else
    handles them (over HTTP the worker's drain takes SIGTERM); `on_start` runs once it is up."""

    @asynccontextmanager
    async def lifespan(_: FastMCP) -> AsyncIterator[dict[str, object]]:
        stop = asyncio.Event()
        if on_signal is not None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal)
        await gateway.start()
        tools.search.start()
        install_sighup(gateway)
        if on_start is not None:
            on_start()
        tasks = [
            asyncio.create_task(watch_config(gateway, stop), name="config-watcher"),
            asyncio.create_task(sweep_sessions(gateway), name="session-sweeper"),
        ]
        try:
            yield {}
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.close()
            tracing.shutdown()

    tools = GatewayTools(gateway)
    mcp = FastMCP(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        mask_error_details=True,
        request_state_security=request_state_security(gateway),
    )
    pipeline = Pipeline(gateway, register_tools(mcp, tools))
    for middleware in pipeline.middlewares:
        mcp.add_middleware(middleware)
    mcp.completion(pipeline.complete)
    compat.route_tool_input_schema(mcp, pipeline.view.input_schema)
    compat.set_cache_hints(mcp, dict.fromkeys(LISTS, CacheHint(ttl_ms=LIST_TTL_MS, scope="private")))
    # fastmcp serves no resources/subscribe and has no hook for it: the handlers go on its
    # low-level server, which then advertises `resources.subscribe`.
    compat.add_request_handler(mcp, "resources/subscribe", mt.SubscribeRequestParams, pipeline.subscribe)
    compat.add_request_handler(
        mcp, "resources/unsubscribe", mt.UnsubscribeRequestParams, pipeline.unsubscribe
    )
    # Served, `subscriptions/listen` makes the SDK advertise `listChanged` (and
    # `resources.subscribe`) to 2026-07-28 clients, who hear of changes only on it.
    compat.add_request_handler(
        mcp, "subscriptions/listen", mt.SubscriptionsListenRequestParams, pipeline.listen
    )
    tasks.register(mcp)
    return mcp


def request_state_security(gateway: Gateway) -> RequestStateSecurity:
    """How a 2026-07-28 retry's requestState is sealed (`server.held`): under the configured keys,
    which replicas share, else a key of this process's own; it expires with the held call. The
    agent it belongs to is inside it and checked by the gateway, not by the SDK's principal."""
    settings = gateway.settings
    keys: list[str | bytes] = [key.get_secret_value() for key in settings.request_state_keys]
    return RequestStateSecurity(
        keys=keys or [os.urandom(32)], ttl=settings.input_wait, bind_principal=None, audience=SERVER_NAME
    )


async def sweep_sessions(gateway: Gateway) -> None:
    """Drop the records of sessions idle past the TTL (the SDK ends the sessions themselves)."""
    interval = max(1.0, min(60.0, gateway.settings.session_ttl / 4))
    while True:
        await asyncio.sleep(interval)
        gateway.sessions.expire()
        gateway.list_changed.prune()
        await gateway.subscriptions.prune()
