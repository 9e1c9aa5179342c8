"""Studio fixture: prompts, resources and a resource template beside its tools, and tools that
ask their client for something mid-call (elicitation, sampling, roots) or take their time."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as mt
from fastmcp import Context, FastMCP
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel

from _common import run

mcp = FastMCP("studio")


class Answer(BaseModel):
    colour: str


@mcp.tool(annotations={"readOnlyHint": True, "title": "Say hello"})
def hello(name: str) -> str:
    """Greets `name`; the definition a client sees must arrive unchanged."""
    return f"hello {name}"


@mcp.tool
async def ask_colour(ctx: Context) -> str:
    """Asks the calling client for a colour (elicitation) and returns its answer."""
    result = await ctx.elicit("Which colour?", response_type=Answer)
    if result.action != "accept":
        return f"no colour ({result.action})"
    return f"colour {result.data.colour}"


@mcp.tool
async def summarise(text: str, ctx: Context) -> str:
    """Asks the calling client's model to summarise `text` (sampling)."""
    message = mt.SamplingMessage(role="user", content=mt.TextContent(type="text", text=f"Summarise: {text}"))
    request = mt.CreateMessageRequest(params=mt.CreateMessageRequestParams(messages=[message], max_tokens=50))
    reply = await ctx.session.send_request(request, mt.CreateMessageResult, metadata=_within(ctx))
    assert isinstance(reply.content, mt.TextContent)
    return f"summary {reply.content.text}"


@mcp.tool
async def client_roots(ctx: Context) -> list[str]:
    """The roots the calling client lists."""
    roots = await ctx.session.send_request(mt.ListRootsRequest(), mt.ListRootsResult, metadata=_within(ctx))
    return [str(root.uri) for root in roots.roots]


def _within(ctx: Context) -> ServerMessageMetadata:
    """Send on the call's own stream (fastmcp 4 has no sampling or roots helpers on Context)."""
    return ServerMessageMetadata(related_request_id=ctx.request_id)


@mcp.tool
async def wait(seconds: float) -> str:
    """Sleeps, listed in the `waiting` resource meanwhile; a cancelled call leaves a mark in the
    `cancelled` resource."""
    _WAITING.append(seconds)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _CANCELLED.append(seconds)
        raise
    finally:
        _WAITING.remove(seconds)
    return "waited"


_WAITING: list[float] = []
_CANCELLED: list[float] = []


@mcp.prompt
def review(subject: str) -> str:
    """Asks for a review of `subject`."""
    return f"Please review {subject}."


@mcp.resource("note://readme", mime_type="text/plain")
def readme() -> str:
    """The studio's read-me."""
    return "studio read-me"


@mcp.resource("note://cancelled", mime_type="application/json")
def cancelled() -> list[float]:
    """The `wait` calls that were cancelled, by their seconds."""
    return _CANCELLED


@mcp.resource("note://waiting", mime_type="application/json")
def waiting() -> list[float]:
    """The `wait` calls now sleeping, by their seconds: a test cancels one once it runs."""
    return _WAITING


@mcp.resource("note://{name}")
def note(name: str) -> str:
    """A note by name."""
    return f"note {name}"


@mcp.tool
async def touch(uri: str, ctx: Context) -> str:
    """Announces that the resource `uri` changed (to whoever subscribed: the gateway)."""
    await ctx.session.send_resource_updated(uri)
    return f"touched {uri}"


async def _acknowledge(ctx: Any, params: Any) -> mt.EmptyResult:
    return mt.EmptyResult()


# FastMCP 4 serves no resources/subscribe; these handlers make the server advertise it.
mcp._mcp_server.add_request_handler("resources/subscribe", mt.SubscribeRequestParams, _acknowledge)
mcp._mcp_server.add_request_handler("resources/unsubscribe", mt.UnsubscribeRequestParams, _acknowledge)


if __name__ == "__main__":
    run(mcp)
