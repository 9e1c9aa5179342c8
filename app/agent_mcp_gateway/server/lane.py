"""The call lane: a `tools/call` over HTTP served beside the SDK's server, doing only what a
gateway must.

The SDK's path for a call (its transport's memory streams and task per request, the request and
result validated into models and dumped again, an event stream and four tasks for every
handshake-era answer) cost more CPU than the downstream server's whole answer (README,
"Performance"). A call the lane takes is parsed once (by the edge, `edge/body.py`), its caller
was authenticated once (`RequestFacts`), and here it is decided (policy, once), charged (the
rate limit), forwarded with its arguments as received on the plain JSON-RPC lane
(`downstream/rpc.py`), and answered with the server's result as sent (its shape checked, its size
bounded by the downstream transport) as `application/json`. Only when the server sends a log
message during the call does the answer become an event stream, the message first.

It runs as the same audited operation as the full path (`Operations`, `Identify`, `Forward`):
audit line, metrics, span, error codes, drain (it sits inside `edge/drain.py`) and session
expiry (`compat.in_flight`) are the same. The lane takes a call only when nothing it skips can
matter (`_eligible`): every other request, and any call that could need the SDK's session (a
progress token, a client that could be asked something, a retry of a multi-round-trip call,
anything malformed), goes the full path unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import mcp_types as mt
import orjson
from fastmcp.server.telemetry import server_span
from mcp import MCPError
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway import compat
from agent_mcp_gateway.access.identity import RequestFacts, facts_of, resolve
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.session import Round
from agent_mcp_gateway.gateway import Gateway, Snapshot
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.observe.record import Recorder
from agent_mcp_gateway.operation import Operation, begin, end
from agent_mcp_gateway.protocol import MCP_PATH, METHOD_NOT_FOUND, PROTOCOL_VERSION_HEADER, SESSION_HEADER
from agent_mcp_gateway.server.aggregate import AggregateView
from agent_mcp_gateway.server.answering import answered
from agent_mcp_gateway.server.build import SERVER_NAME
from agent_mcp_gateway.server.call import Call, text
from agent_mcp_gateway.server.discovery import MAX_TIMEOUT_MS
from agent_mcp_gateway.server.forward import Forward
from agent_mcp_gateway.server.identify import Identify
from agent_mcp_gateway.server.operations import Operations, fail, unwrap
from agent_mcp_gateway.server.tasks import without_tasks

# What a client may declare that lets a server ask it something mid-call: such calls need the
# SDK's session (requests on the call's stream, or held calls across rounds).
ASKING = frozenset({"sampling", "elicitation", "roots", "tasks"})
# Session-era versions whose streams the SDK primes for resumption (a dropped call is resumed
# with `Last-Event-ID`, README "Resumable streams"): a JSON answer has nothing to resume.
RESUMABLE = frozenset(v for v in HANDSHAKE_PROTOCOL_VERSIONS if v >= "2025-11-25")
EXECUTE_ARGUMENTS = frozenset({"server", "tool", "agent_id", "args", "timeout_ms"})
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class _Plan:
    """One call the lane takes: who, which view, and where it goes."""

    facts: RequestFacts
    snapshot: Snapshot
    request_id: str | int
    name: str
    arguments: dict[str, Any]
    aggregate: bool
    modern: bool
    capabilities: dict[str, Any] | None  # a 2026-07-28 caller's, passed on as the full path does
    session: Any = None  # the SDK transport of a handshake-era session


class CallLane:
    """Pure ASGI middleware, innermost: takes the calls it can serve, passes on the rest."""

    def __init__(
        self, app: ASGIApp, gateway: Gateway, manager: Callable[[], StreamableHTTPSessionManager | None]
    ):
        self.app = app
        self.gateway = gateway
        self.manager = manager
        self.forward = Forward(gateway)
        self.aggregate = AggregateView(gateway)
        self.identify = Identify(gateway.rate_limits)
        self.recorder = Recorder(gateway.audit)
        self.running: dict[tuple[str, str | int], asyncio.Task[Any]] = {}  # (session, id): the call
        self.cancelled: set[tuple[str, str | int]] = set()  # calls their clients cancelled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == MCP_PATH:
            facts = facts_of(scope)
            if facts.method == "tools/call":
                plan = self._eligible(scope, facts)
                if plan is not None:
                    await self._serve(plan, scope, receive, send)
                    return
            elif facts.method == "notifications/cancelled":
                self._cancel(facts)
        await self.app(scope, receive, send)

    # --- eligibility -------------------------------------------------------------------------

    def _eligible(self, scope: Scope, facts: RequestFacts) -> _Plan | None:
        message = facts.message
        lane = self.gateway.settings.call_lane
        if message is None or lane == "off":
            return None
        request_id, params = message.get("id"), message.get("params")
        if (
            not isinstance(request_id, str | int)
            or isinstance(request_id, bool)
            or not isinstance(params, dict)
        ):
            return None
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params.get("_meta", {})
        if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(meta, dict):
            return None
        if params.keys() - {"name", "arguments", "_meta"} or not all(map(_envelope_key, meta)):
            return None
        headers = Headers(scope=scope)
        if not _accepts_both(headers) or not headers.get("content-type", "").startswith("application/json"):
            return None
        version = headers.get(PROTOCOL_VERSION_HEADER)
        snapshot = facts.snapshot or self.gateway.snapshot
        plan = _Plan(facts, snapshot, request_id, name, arguments, False, False, None)
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            if (lane != "all" and version in RESUMABLE) or not self._session_allows(scope, facts, plan):
                return None
        elif not _modern_allows(scope, message, headers, plan):
            return None
        resolution = resolve(
            snapshot.engine, facts, arguments.get("agent_id") if name == "execute_tool" else None
        )
        if resolution.refusal is not None or resolution.agent is None:
            return None
        plan.aggregate = snapshot.config.rules.view_of(resolution.agent) == "aggregate"
        if plan.aggregate:
            return plan
        if name != "execute_tool" or not _execute_arguments(arguments):
            return None
        return plan

    def _session_allows(self, scope: Scope, facts: RequestFacts, plan: _Plan) -> bool:
        """A handshake-era call: its session is open and the caller's, and its client declared
        nothing a server could ask of it."""
        manager = self.manager()
        record = facts.session
        if manager is None or facts.session_id is None or record is None or record.capabilities is None:
            return False
        if record.capabilities.keys() & ASKING:
            return False
        plan.session = compat.live_session(manager, facts.session_id, scope)
        return plan.session is not None

    def _cancel(self, facts: RequestFacts) -> None:
        """A client's `notifications/cancelled` for a call the lane runs ends that call (the
        SDK, which also gets it, knows no such request and ignores it)."""
        params = facts.message.get("params") if facts.message is not None else None
        if facts.session_id is not None and isinstance(params, dict):
            request_id = params.get("requestId")
            if not isinstance(request_id, str | int):
                return
            task = self.running.get((facts.session_id, request_id))
            if task is not None:
                self.cancelled.add((facts.session_id, request_id))
                task.cancel()

    # --- serving -----------------------------------------------------------------------------

    async def _serve(self, plan: _Plan, scope: Scope, receive: Receive, send: Send) -> None:
        answer = _Answer(plan, send)
        task = asyncio.current_task()
        assert task is not None
        key = (plan.facts.session_id or "", plan.request_id)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(receive, task, gone))
        if plan.session is not None:
            self.running[key] = task
        try:
            with compat.in_flight(plan.session) if plan.session is not None else nullcontext():
                outcome = await self._call(plan, answer)
        except asyncio.CancelledError:
            if gone.is_set():  # the client went away: nothing to answer
                task.uncancel()
                return
            if key not in self.cancelled:
                raise
            # Cancelled by its client: no response is sent for it (as the SDK does), only the
            # end of the HTTP answer.
            self.cancelled.discard(key)
            task.uncancel()
            await answer.end()
            return
        finally:
            watcher.cancel()
            self.running.pop(key, None)
        await answer.finish(outcome)

    async def _call(self, plan: _Plan, answer: _Answer) -> dict[str, Any]:
        """The call as one audited operation; its JSON-RPC response."""
        facts, arguments = plan.facts, plan.arguments
        if plan.aggregate:
            call = Call(
                "tools/call", facts, plan.snapshot, _resolution(plan), _unused, None, tool=text(plan.name)
            )
        else:
            claim = arguments.get("agent_id")
            call = Call("execute_tool", facts, plan.snapshot, _resolution(plan), _unused, claim)
            call.server, call.tool = text(arguments["server"]), text(arguments["tool"])
        call.span_name = f"tools/call {plan.name}"
        op = call.op = Operations.open(call)
        token = begin(op)
        try:
            # Raised through the spans as on the full path (`Operations`), so they record it.
            with _served(plan.name), self.recorder.recording(op, call.span_name):
                try:
                    await self.identify.settle(call)
                    result = await self._forward(plan, op, answer)
                except Exception as exc:
                    raise fail(op, unwrap(exc)) from None
        except MCPError as error:
            return {"jsonrpc": "2.0", "id": plan.request_id, "error": _error(error)}
        finally:
            end(token)
        return {"jsonrpc": "2.0", "id": plan.request_id, "result": result}

    async def _forward(self, plan: _Plan, op: Operation, answer: _Answer) -> dict[str, Any]:
        if plan.aggregate:
            routed = await self.aggregate.route_tool(op, plan.name)
            server, tool, decision, arguments = routed.server, routed.name, routed.decision, plan.arguments
            timeout = None
        else:
            server, tool, decision = plan.arguments["server"], plan.arguments["tool"], None
            arguments, timeout = plan.arguments.get("args") or {}, plan.arguments.get("timeout_ms")
        op.tool = tool
        downstream = self.forward.admit(op, "execute_tool", server, tool, decision)
        outcome = await downstream.relay_tool(
            tool,
            arguments,
            self.forward.timeout_ms(downstream, timeout),
            answer,
            self.forward.known(op, downstream, tool),
            plan.capabilities,
        )
        if not isinstance(outcome, mt.InputRequiredResult):
            return _result(outcome, plan.modern)
        # A 2026-07-28 server asks first: its questions go back in the result to a 2026-07-28
        # caller, and are answered within the call for a handshake-era one (who declared no
        # way to answer, so each is told so), as on the full path.
        asked: BaseModel = self.gateway.held.wrap(outcome, op.agent_id)
        if not plan.modern:
            timeout_ms, known = (
                self.forward.timeout_ms(downstream, timeout),
                self.forward.known(op, downstream, tool),
            )

            async def again(
                answers: dict[str, Any] | None, state: str | None
            ) -> mt.CallToolResult | mt.InputRequiredResult:
                return await downstream.call_tool(
                    tool, arguments, timeout_ms, answer, known, Round(answers, state)
                )

            asked = await answered(answer, outcome, again)
        return asked.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Answer:
    """The call's HTTP answer, and the `Relay` its server's messages go to: JSON unless a
    message comes before the result, then an event stream carrying it first."""

    def __init__(self, plan: _Plan, send: Send) -> None:
        self.plan, self.send = plan, send
        self.streaming = False
        self.done = False  # the answer is complete: later messages have no call to go with
        self.session = plan.facts.session_id if not plan.modern else None

    def _headers(self, content_type: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self.session is None:
            return content_type
        return [*content_type, (SESSION_HEADER.encode(), self.session.encode())]

    async def _event(self, message: dict[str, Any], more: bool) -> None:
        data = b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def end(self) -> None:
        """The end of an answer that carries no response (its call was cancelled)."""
        self.done = True
        if not self.streaming:
            self.streaming = True
            await self.send(
                {"type": "http.response.start", "status": 200, "headers": self._headers(SSE_HEADERS)}
            )
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(self, response: dict[str, Any]) -> None:
        self.done = True
        if self.streaming:
            await self._event(response, more=False)
            return
        body = orjson.dumps(response)
        status = 200
        if self.plan.modern and "error" in response:
            status = ERROR_CODE_HTTP_STATUS.get(response["error"]["code"], 200)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": self._headers(headers)})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    # --- Relay -------------------------------------------------------------------------------

    @property
    def wants_progress(self) -> bool:
        return False  # a call with a progress token takes the full path

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None

    async def log(self, params: mt.LoggingMessageNotificationParams) -> None:
        if self.done:
            return
        if not self.streaming:
            self.streaming = True
            await self.send(
                {"type": "http.response.start", "status": 200, "headers": self._headers(SSE_HEADERS)}
            )
        notification = {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": params.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        await self._event(notification, more=True)

    async def elicit(self, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        raise _unsupported("elicitation")

    async def sample(self, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        raise _unsupported("sampling")

    async def list_roots(self) -> mt.ListRootsResult:
        raise _unsupported("roots")

    @property
    def declares_roots(self) -> bool:
        return False

    @property
    def client(self) -> str:
        return self.plan.facts.session_id or f"lane-{id(self)}"

    @property
    def live(self) -> bool:
        return not self.done

    def detached(self) -> Relay:
        return self


def _unsupported(what: str) -> MCPError:
    """As the full path tells a server whose caller declared no such capability."""
    return MCPError(METHOD_NOT_FOUND, f"the calling client does not support {what}")


def _result(answer: dict[str, Any], modern: bool) -> dict[str, Any]:
    """The server's result as the full path hands it on: its content, structured content,
    error flag and `_meta`, nothing else the server added (and, to a 2026-07-28 caller, the
    `resultType` the SDK adds)."""
    result: dict[str, Any] = {"content": answer["content"]}
    for key in ("structuredContent", "isError", "_meta"):
        if key in answer:
            result[key] = answer[key]
    result.setdefault("isError", False)
    if modern:
        result["resultType"] = "complete"
    return result


def _error(error: MCPError) -> dict[str, Any]:
    data = modern_error_data(error)
    return data.model_dump(mode="json", by_alias=True, exclude_none=True)


def _envelope_key(key: str) -> bool:
    """A `_meta` key of the protocol's own envelope; any other (a progress token, a trace
    context fastmcp would continue) sends the call the full path."""
    return key.startswith("io.modelcontextprotocol/")


def _accepts_both(headers: Headers) -> bool:
    accept = headers.get("accept", "")
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return "application/json" in types and "text/event-stream" in types


def _modern_allows(scope: Scope, message: dict[str, Any], headers: Headers, plan: _Plan) -> bool:
    """A 2026-07-28 call whose envelope the SDK accepts as is, from a client that declares
    nothing a server could ask of it, with no `Mcp-Param-*` headers to check."""
    if SESSION_HEADER in headers or find_duplicated_routing_header(headers.items()) is not None:
        return False
    if any(name.startswith("mcp-param-") for name in headers):
        return False
    verdict = classify_inbound_request(message, headers=dict(headers))
    if not isinstance(verdict, InboundModernRoute) or not isinstance(verdict.client_capabilities, dict):
        return False
    if verdict.client_capabilities.keys() & ASKING:
        return False
    plan.modern = True
    plan.capabilities = without_tasks(verdict.client_capabilities)
    return True


def _execute_arguments(arguments: dict[str, Any]) -> bool:
    """`execute_tool`'s arguments as its schema takes them; anything else is left to fastmcp's
    validation on the full path."""
    if arguments.keys() - EXECUTE_ARGUMENTS:
        return False
    timeout = arguments.get("timeout_ms")
    return (
        isinstance(arguments.get("server"), str)
        and isinstance(arguments.get("tool"), str)
        and isinstance(arguments.get("agent_id"), str | None)
        and isinstance(arguments.get("args"), dict | None)
        and (timeout is None or (type(timeout) is int and 1 <= timeout <= MAX_TIMEOUT_MS))
    )


def _resolution(plan: _Plan) -> Any:
    claim = plan.arguments.get("agent_id") if not plan.aggregate else None
    return resolve(plan.snapshot.engine, plan.facts, claim)


def _served(name: str) -> AbstractContextManager[object]:
    """The SERVER span of the MCP request, as fastmcp opens it on the full path (the operation's
    span, which the recorder annotates); none while tracing is off, as there."""
    if not tracing.enabled():
        return nullcontext()
    return server_span(f"tools/call {name}", "tools/call", SERVER_NAME, "tool", name, tool_name=name)


async def _unused(op: Operation) -> None:
    """A lane call is run by the lane, not by `Call.run`."""


async def _watch(receive: Receive, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    """Cancel the call when its client goes away (the SDK does the same for its requests)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    task.cancel()
