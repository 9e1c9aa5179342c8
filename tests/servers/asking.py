"""Asking fixture: tools that ask their caller mid-call in whichever era the caller speaks.

On a handshake-era connection each question is a request to the client (elicitation, sampling,
roots) sent on the call's own stream; on a 2026-07-28 connection it is an `InputRequiredResult`
(the guard pattern) and the answer comes with the client's retry. `interview` asks three things
one after the other (three rounds), `pair` asks two at once, `colour` one. The prompt `briefing`
and the resource `asking://profile` ask too (prompts/get and resources/read are multi-round-trip
requests as well): `briefing` three things in a row like `interview`, `profile` the client's
roots and then a shape.
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


async def in_turn(ctx: Context, questions: tuple[Any, ...]) -> list[str] | mt.InputRequiredResult:
    """Ask `questions` one after the other: the answers so far, or (2026-07-28) the next round's
    question, with the answers so far in the state the client echoes."""
    if not modern(ctx):
        return [said(await ask(ctx, question)) for question in questions]
    state = ctx.request_state
    if state is None:
        return mt.InputRequiredResult(input_requests={"q0": questions[0]}, request_state="0")
    so_far = state.split("\n")
    step = int(so_far[0])
    answers = [*so_far[1:], answered(ctx, f"q{step}")]
    if step == len(questions) - 1:
        return answers
    return mt.InputRequiredResult(
        input_requests={f"q{step + 1}": questions[step + 1]},
        request_state="\n".join([str(step + 1), *answers]),
    )


@mcp.tool
async def interview(topic: str, ctx: Context) -> Any:
    """Three questions one after the other: a colour, a shape, the client's roots."""
    answers = await in_turn(ctx, (COLOUR, SAMPLE, ROOTS))
    return answers if isinstance(answers, mt.InputRequiredResult) else f"{topic}: " + " | ".join(answers)


@mcp.prompt
async def briefing(topic: str, ctx: Context) -> Any:
    """A prompt that asks three things in a row before it is written: a colour, a shape, roots."""
    answers = await in_turn(ctx, (COLOUR, SAMPLE, ROOTS))
    if isinstance(answers, mt.InputRequiredResult):
        return answers
    return f"Brief on {topic}: " + " | ".join(answers)


@mcp.resource("asking://profile")
async def profile(ctx: Context) -> Any:
    """A resource that asks for the client's roots, then for a shape, before it is read."""
    answers = await in_turn(ctx, (ROOTS, SAMPLE))
    return answers if isinstance(answers, mt.InputRequiredResult) else "profile: " + " | ".join(answers)


if __name__ == "__main__":
    run(mcp)
