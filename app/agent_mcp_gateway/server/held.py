"""Calls held between the rounds of a 2026-07-28 client's multi-round-trip request (MRTR).

A call here is any request that may ask its caller mid-way: `tools/call`, `prompts/get` and
`resources/read`. A handshake-era server asks its caller mid-call (elicitation, sampling,
roots) by sending a request and waiting for the answer; a 2026-07-28 client cannot receive such
a request: it gets an `InputRequiredResult` and retries the call with its answers. The gateway
bridges the two. The downstream call keeps running in this process while the server waits; its
questions go back to the client as `inputRequests`, with a `requestState` naming the held call,
and the retry's `inputResponses` answer them. The SDK's request-state boundary seals that state
on the way out (under `GATEWAY_REQUEST_STATE_KEYS`), bound to the method, its target (tool or
prompt name, resource URI) and arguments, and refuses a tampered or replayed one on the way in;
this module checks that the retry comes from the agent that made the call and reaches the
process that holds it. Held calls are bounded in number and each waits at most
`GATEWAY_INPUT_WAIT` seconds for its retry before it is cancelled.

A 2026-07-28 server asks the same way the client does: its `InputRequiredResult` passes through,
its own `requestState` wrapped in the gateway's (which names the agent), and the retry goes to
the same downstream session with the client's answers; nothing is held between those rounds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import mcp_types as mt
from mcp import MCPError
from pydantic import BaseModel, ValidationError

from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.session import FIRST, Round
from agent_mcp_gateway.errors import CallNotHeld, RequestStateRefused, TooManyHeldCalls
from agent_mcp_gateway.protocol import INVALID_PARAMS
from agent_mcp_gateway.server.relay import ClientRelay

R = TypeVar("R", bound=BaseModel)
A = TypeVar("A", bound=BaseModel)


# The downstream call, given the relay its server's messages go to and its first round (a
# 2026-07-28 server's retry, or the first): its result, or a 2026-07-28 server's questions.
Start = Callable[[Relay, Round], Awaitable[A | mt.InputRequiredResult]]


@dataclass(slots=True)
class _Ask:
    """One question the downstream server waits on: sent to the client, answered by its retry."""

    request: mt.ElicitRequest | mt.CreateMessageRequest | mt.ListRootsRequest
    answer: type[BaseModel]
    future: asyncio.Future[BaseModel]


class HeldRelay:
    """What a held call's downstream sees as its caller: progress and log messages go to the
    client's current round (none between rounds), questions wait for the next round's answers."""

    def __init__(self, call: HeldCall, relay: ClientRelay) -> None:
        self._call = call
        self.round: ClientRelay | None = relay
        self._last = relay

    def enter(self, relay: ClientRelay) -> None:
        self.round = self._last = relay

    @property
    def wants_progress(self) -> bool:
        return self.round is not None and self.round.wants_progress

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.round is not None:
            await self.round.progress(progress, total, message)

    async def log(self, params: mt.LoggingMessageNotificationParams) -> None:
        if self.round is not None:
            await self.round.log(params)

    async def elicit(self, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        self._last.require(mt.ClientCapabilities(elicitation=mt.ElicitationCapability()), "elicitation")
        return await self._call.ask(mt.ElicitRequest(params=params), mt.ElicitResult)

    async def sample(self, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        self._last.require(mt.ClientCapabilities(sampling=mt.SamplingCapability()), "sampling")
        return await self._call.ask(mt.CreateMessageRequest(params=params), mt.CreateMessageResult)

    async def list_roots(self) -> mt.ListRootsResult:
        self._last.require(mt.ClientCapabilities(roots=mt.RootsCapability()), "roots")
        return await self._call.ask(mt.ListRootsRequest(), mt.ListRootsResult)

    @property
    def declares_roots(self) -> bool:
        return False  # roots reach the server only as an answer within a call

    @property
    def client(self) -> str:
        return self._last.client

    @property
    def live(self) -> bool:
        return not self._call.ended

    def detached(self) -> Relay:
        return self._last.detached()


class HeldCall:
    """One downstream call of one agent, run across the rounds of its client's request."""

    def __init__(self, agent: str, relay: ClientRelay) -> None:
        self.key = uuid.uuid4().hex
        self.agent = agent
        self.relay = HeldRelay(self, relay)
        self.task: asyncio.Task[Any] | None = None
        self.asks: dict[str, _Ask] = {}  # asked by the server, not yet sent to the client
        self.sent: dict[str, _Ask] = {}  # sent in the last InputRequiredResult
        self.asked = asyncio.Event()
        self.busy = False  # a round is running
        self.ended = False
        self.expiry: asyncio.TimerHandle | None = None
        self._count = 0

    async def ask(self, request: Any, answer: type[R]) -> R:
        self._count += 1
        key = f"{request.method.split('/')[0]}-{self._count}"
        future: asyncio.Future[BaseModel] = asyncio.get_running_loop().create_future()
        self.asks[key] = _Ask(request, answer, future)
        self.asked.set()
        result = await future
        assert isinstance(result, answer)
        return result

    def answer(self, responses: dict[str, Any]) -> None:
        """Hand the retry's answers to the questions they answer; one left unanswered is asked
        again in the next round."""
        for key, ask in self.sent.items():
            response = responses.get(key)
            if response is None:
                self.asks[key] = ask
                continue
            if isinstance(response, BaseModel):
                response = response.model_dump(mode="json", by_alias=True)
            try:
                ask.future.set_result(ask.answer.model_validate(response))
            except ValidationError:
                malformed = MCPError(INVALID_PARAMS, f"the client's answer to {key} is malformed")
                ask.future.set_exception(malformed)
        self.sent = {}

    def end(self) -> None:
        self.ended = True
        if self.expiry is not None:
            self.expiry.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        for ask in (*self.asks.values(), *self.sent.values()):
            ask.future.cancel()


class HeldCalls:
    """The calls this process holds for their clients' retries."""

    def __init__(self, wait: float, limit: int, replica: str | None = None) -> None:
        self.wait, self.limit = wait, limit
        self.replica = replica or socket.gethostname()
        self._held: dict[str, HeldCall] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def run(self, agent: str, relay: ClientRelay, start: Start[A]) -> A | mt.InputRequiredResult:
        """One round of a call for a 2026-07-28 client: the call's result, or the questions its
        server waits on. A first round starts the call (`start`); a retry carrying a
        `requestState` resumes the held call it names, or calls a 2026-07-28 server again."""
        state = _opened(relay.request_state, agent)
        if "call" in state:
            call = self._resume(state, relay)
        else:
            first = Round(relay.input_responses, state["down"]) if state else FIRST
            first = replace(first, capabilities=relay.capabilities)
            call = HeldCall(agent, relay)
            call.task = asyncio.create_task(_run(start, call.relay, first))
        call.busy = True
        try:
            outcome: A | mt.InputRequiredResult = await self._round(call)
        except asyncio.CancelledError:
            self._drop(call)
            raise
        finally:
            call.busy = False
        return outcome

    async def _round(self, call: HeldCall) -> Any:
        """Wait for the call to end or to ask something, whichever is first."""
        task = call.task
        assert task is not None
        while True:
            if call.asks:
                return self._hold(call)
            if task.done():
                self._drop(call)
                outcome = task.result()
                if isinstance(outcome, mt.InputRequiredResult):  # a 2026-07-28 server's own
                    return self.wrap(outcome, call.agent)
                return outcome
            call.asked.clear()
            asked = asyncio.ensure_future(call.asked.wait())
            try:
                await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                asked.cancel()
            await asyncio.sleep(0)  # questions asked together go out together

    @staticmethod
    def wrap(outcome: mt.InputRequiredResult, agent: str) -> mt.InputRequiredResult:
        """A 2026-07-28 server's questions as its caller gets them: its own `requestState`
        inside the gateway's, which names the agent (the retry goes to the same server)."""
        wrapped = {"down": outcome.request_state, "agent": agent}
        return outcome.model_copy(update={"request_state": _state(wrapped)})

    def _hold(self, call: HeldCall) -> mt.InputRequiredResult:
        if call.key not in self._held:
            if len(self._held) >= self.limit:
                self._drop(call)
                raise TooManyHeldCalls(self.limit)
            self._held[call.key] = call
        call.sent, call.asks = call.asks, {}
        call.relay.round = None
        call.expiry = asyncio.get_running_loop().call_later(self.wait, self._drop, call)
        state = {"call": call.key, "agent": call.agent, "replica": self.replica}
        return mt.InputRequiredResult(
            input_requests={key: ask.request for key, ask in call.sent.items()},
            request_state=_state(state),
        )

    def _resume(self, state: dict[str, Any], relay: ClientRelay) -> HeldCall:
        key, replica = str(state["call"]), str(state.get("replica"))
        call = self._held.get(key)
        if call is None:
            raise CallNotHeld(replica, self.replica)
        if call.busy:
            raise RequestStateRefused("a retry of this call is already running")
        if call.expiry is not None:
            call.expiry.cancel()
        call.relay.enter(relay)
        call.answer(relay.input_responses or {})
        return call

    def _drop(self, call: HeldCall) -> None:
        self._held.pop(call.key, None)
        call.end()

    def close(self) -> None:
        for call in list(self._held.values()):
            self._drop(call)


async def _run(start: Start[A], relay: Relay, first: Round) -> A | mt.InputRequiredResult:
    return await start(relay, first)


def _state(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"))


def _opened(request_state: str | None, agent: str) -> dict[str, Any]:
    """What a retry's `requestState` says (the SDK has checked the gateway sealed it): a held
    call (`call`) or a 2026-07-28 server's own state (`down`), for `agent` only; {} for none."""
    if request_state is None:
        return {}
    try:
        state = json.loads(request_state)
    except ValueError:
        state = None
    if not isinstance(state, dict) or not ("call" in state or "down" in state):
        raise RequestStateRefused("it does not name a call of this gateway")
    if state.get("agent") != agent:
        raise RequestStateRefused("it belongs to another agent's call")
    return state
