"""A 2026-07-28 server's questions, answered for a handshake-era client within its call.

A 2026-07-28 server asks its caller mid-call by answering the call with an
`InputRequiredResult` (elicitation, sampling, roots) and expects a retry carrying the answers.
A handshake-era client knows nothing of that: it answers requests sent on its call's stream.
The gateway turns each question into such a request to the calling client (`ClientRelay`),
collects the answers and retries the downstream, round after round, until the result (of a
tool call, a prompt or a resource read); the SDK client's own loop drives the rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import mcp_types as mt
from mcp import MCPError
from pydantic import BaseModel

from agent_mcp_gateway import compat
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.protocol import INTERNAL_ERROR, METHOD_NOT_FOUND

MAX_ROUNDS = 16

A = TypeVar("A", bound=BaseModel)
Retry = Callable[[dict[str, Any] | None, str | None], Awaitable[A | mt.InputRequiredResult]]


async def answered(relay: Relay | None, first: mt.InputRequiredResult, retry: Retry[A]) -> A:
    """The call's result once every round's questions are answered by the calling client."""
    if relay is None:
        raise MCPError(
            METHOD_NOT_FOUND, "the server asks its caller for input, and this call has no caller to ask"
        )

    async def ask(key: str, request: mt.InputRequest) -> mt.InputResponse | mt.ErrorData:
        try:
            if isinstance(request, mt.ElicitRequest):
                return await relay.elicit(request.params)
            if isinstance(request, mt.CreateMessageRequest):
                return await relay.sample(request.params)
            return await relay.list_roots()
        except MCPError as exc:  # the client cannot answer, or refused: the call ends so
            return exc.error

    try:
        result: A = await compat.run_input_required_driver(
            first, dispatch=ask, retry=retry, max_rounds=MAX_ROUNDS
        )
    except compat.InputRequiredRoundsExceededError:
        raise MCPError(
            INTERNAL_ERROR, f"the server asked for input more than {MAX_ROUNDS} times in one call"
        ) from None
    return result
