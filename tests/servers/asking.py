"""Asking fixture: tools that ask their caller mid-call in whichever era the caller speaks.

On a handshake-era connection each question is a request to the client (elicitation, sampling,
roots) sent on the call's own stream; on a 2026-07-28 connection it is an `InputRequiredResult`
(the guard pattern) and the answer comes with the client's retry. `interview` asks three things
one after the other (three rounds), `pair` asks two at once, `colour` one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types as mt
from fastmcp import Context, FastMCP
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from _common import run

mcp = FastMCP("asking")

COLOUR = mt.ElicitRequest(
    params=mt.ElicitRequestFormParams(
        message="Which colour?",
        requested_schema={
            "type": "object",
            "properties": {"colour": {"type": "string"}},
            "required": ["colour"],
        },
    )
)
SAMPLE = mt.CreateMessageRequest(
    params=mt.CreateMessageRequestParams(
        messages=[mt.SamplingMessage(role="user", content=mt.TextContent(type="text", text="Name a shape"))],
        max_tokens=20,
    )
)
ROOTS = mt.ListRootsRequest()
ANSWERS: dict[str, type[Any]] = {
    "elicitation/create": mt.ElicitResult,
    "sampling/createMessage": mt.CreateMessageResult,
    "roots/list": mt.ListRootsResult,
}


def modern(ctx: Context) -> bool:
    request = ctx.request_context
    return request is not None and request.protocol_version in MODERN_PROTOCOL_VERSIONS


async def ask(ctx: Context, request: Any) -> Any:
    """A handshake-era question: a request on the call's own stream."""
    metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
    return await ctx.session.send_request(request, ANSWERS[request.method], metadata=metadata)


def said(answer: Any) -> str:
    """What an answer says, whichever question it answers."""
    if isinstance(answer, mt.ElicitResult):
        return str((answer.content or {}).get("colour")) if answer.action == "accept" else answer.action
    if isinstance(answer, mt.CreateMessageResult):
        return answer.content.text if isinstance(answer.content, mt.TextContent) else "?"
    return ",".join(str(root.uri) for root in answer.roots)


def answered(ctx: Context, key: str) -> str:
    responses = ctx.input_responses or {}
    return said(responses[key])


@mcp.tool
async def colour(ctx: Context) -> Any:
    """One question: a colour."""
    if not modern(ctx):
        return f"colour {said(await ask(ctx, COLOUR))}"
    if ctx.request_state is None:
        return mt.InputRequiredResult(input_requests={"c": COLOUR}, request_state="asked")
    return f"colour {answered(ctx, 'c')}"


@mcp.tool
async def pair(ctx: Context) -> Any:
    """Two questions at once: a colour and a shape."""
    if not modern(ctx):
        colour_answer, shape_answer = await asyncio.gather(ask(ctx, COLOUR), ask(ctx, SAMPLE))
        return f"{said(colour_answer)} {said(shape_answer)}"
    if ctx.request_state is None:
        return mt.InputRequiredResult(input_requests={"c": COLOUR, "s": SAMPLE}, request_state="asked")
    return f"{answered(ctx, 'c')} {answered(ctx, 's')}"


@mcp.tool
async def interview(topic: str, ctx: Context) -> Any:
    """Three questions one after the other: a colour, a shape, the client's roots."""
    if not modern(ctx):
        answers = [said(await ask(ctx, question)) for question in (COLOUR, SAMPLE, ROOTS)]
        return f"{topic}: " + " | ".join(answers)
    state = ctx.request_state
    if state is None:
        return mt.InputRequiredResult(input_requests={"q0": COLOUR}, request_state="0")
    so_far = state.split("\n")
    step = int(so_far[0])
    answers = [*so_far[1:], answered(ctx, f"q{step}")]
    if step == 2:
        return f"{topic}: " + " | ".join(answers)
    question = (COLOUR, SAMPLE, ROOTS)[step + 1]
    return mt.InputRequiredResult(
        input_requests={f"q{step + 1}": question}, request_state="\n".join([str(step + 1), *answers])
    )


if __name__ == "__main__":
    run(mcp)
