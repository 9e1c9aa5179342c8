"""The operation and its failures: every planned call runs as one audited `Operation`.

It opens the operation under the call's snapshot, records it (`observe.record`) whatever the
outcome, and on the way out turns gateway failures into JSON-RPC errors: fastmcp masks
exceptions raised inside a tool into `isError` results, and only an `MCPError` raised from
middleware keeps its code. Anything unexpected becomes a clean internal error.
"""

from __future__ import annotations

import logging
from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from mcp import MCPError
from pydantic import ValidationError

from agent_mcp_gateway.errors import DeniedByPolicy, GatewayError, InvalidAgentId, RateLimited
from agent_mcp_gateway.observe import logs
from agent_mcp_gateway.observe.metrics import RATE_LIMITED, bounded
from agent_mcp_gateway.observe.record import Recorder
from agent_mcp_gateway.operation import Operation, begin, end
from agent_mcp_gateway.protocol import INTERNAL_ERROR, INVALID_PARAMS
from agent_mcp_gateway.server.call import Call, planned

log = logging.getLogger("agent_mcp_gateway")


class Operations(Middleware):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        call = planned(context)
        if call is None:
            return await call_next(context)
        op = call.op = self.open(call)
        token = begin(op)
        try:
            with self.recorder.recording(op, call.span_name):
                try:
                    return await call_next(context)
                except Exception as exc:
                    raise fail(op, unwrap(exc)) from None
        finally:
            end(token)

    @staticmethod
    def open(call: Call) -> Operation:
        request_id = logs.request_id.get() or logs.new_request_id()
        logs.request_id.set(request_id)
        op = Operation(call.name, request_id, call.facts.session_id, snapshot=call.snapshot)
        op.server, op.tool = call.server, call.tool
        return op


def fail(op: Operation, exc: BaseException) -> MCPError:
    """The JSON-RPC error the caller gets for `exc`, with the outcome noted on `op`."""
    if isinstance(exc, GatewayError):
        denied = isinstance(exc, DeniedByPolicy | InvalidAgentId | RateLimited)
        op.decision = "DENY" if denied else "ERROR"
        op.error_code = exc.name
        if isinstance(exc, DeniedByPolicy):
            op.rule = exc.fields["rule"]
        elif isinstance(exc, RateLimited):
            op.rule = "rate_limit"
            assert op.snapshot is not None
            RATE_LIMITED.labels(bounded(op.agent_id, op.snapshot.config.rules.agents)).inc()
        return exc.to_mcp_error()
    op.decision = "ERROR"
    if isinstance(exc, ValidationError | ArgumentsError):
        op.error_code = "INVALID_PARAMS"
        return MCPError(INVALID_PARAMS, _invalid_arguments(op.name, exc))
    if isinstance(exc, MCPError):
        if op.error_code is None:
            op.error_code = f"JSONRPC_{exc.code}"
        else:
            op.decision = "DENY"  # refused by policy, told as unknown (see aggregate.py)
        return exc
    op.error_code = "INTERNAL_ERROR"
    log.exception("gateway operation failed", extra={"operation": op.name})
    return MCPError(
        INTERNAL_ERROR,
        f"The gateway hit an internal error; its log has details under request id {op.request_id}.",
    )


def unwrap(exc: BaseException) -> BaseException:
    """The real failure behind fastmcp's ToolError and ValidationError wrappers."""
    while isinstance(exc, ToolError | ArgumentsError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _invalid_arguments(tool: str, exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return f"Invalid arguments for {tool}: {problems}."
    return f"Invalid arguments for {tool}."
