"""The gateway failures, each a JSON-RPC error code with a name and context fields.

Messages are one sentence meant for an agent to act on; they never carry a traceback, a file
path or a secret. `data.code` holds the name so clients can branch without parsing text.
"""

from __future__ import annotations

from typing import Any

from mcp import MCPError


class GatewayError(Exception):
    code: int = -32000
    name: str = "GATEWAY_ERROR"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    @property
    def data(self) -> dict[str, Any]:
        return {"code": self.name, **self.fields}

    def to_mcp_error(self) -> MCPError:
        return MCPError(self.code, self.message, self.data)


class DeniedByPolicy(GatewayError):
    code = -32000
    name = "DENIED_BY_POLICY"

    def __init__(self, agent_id: str, operation: str, server: str, tool: str | None, rule: str) -> None:
        target = f"tool '{tool}' on server '{server}'" if tool else f"server '{server}'"
        super().__init__(
            f"Agent '{agent_id}' may not use {target} (rule {rule}).",
            agent_id=agent_id,
            operation=operation,
            server=server,
            tool=tool,
            rule=rule,
        )


class ServerUnavailable(GatewayError):
    code = -32001
    name = "SERVER_UNAVAILABLE"

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"Server '{server}' is unavailable: {reason}.", server=server, reason=reason)


class ToolNotFound(GatewayError):
    """`execute_tool` naming a tool its server does not list: the gateway's own `-32002` (the
    product's error table, which clients of `execute_tool` rely on). A protocol-level `tools/call`
    of an unknown name is `-32602` in both views, as the MCP specification answers it."""

    code = -32002
    name = "TOOL_NOT_FOUND"

    def __init__(self, server: str, tool: str) -> None:
        super().__init__(
            f"Tool '{tool}' not found on server '{server}'; call get_server_tools to see "
            "the tools you may use.",
            server=server,
            tool=tool,
        )


class InvalidAgentId(GatewayError):
    code = -32003
    name = "INVALID_AGENT_ID"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid agent_id: {reason}.", reason=reason)


class GatewayTimeout(GatewayError):
    code = -32004
    name = "TIMEOUT"

    def __init__(self, operation: str, timeout_ms: int) -> None:
        super().__init__(
            f"Operation '{operation}' timed out after {timeout_ms} ms.",
            operation=operation,
            timeout_ms=timeout_ms,
        )


class RateLimited(GatewayError):
    code = -32005
    name = "RATE_LIMITED"

    def __init__(self, agent_id: str, limit: str, retry_after: int) -> None:
        super().__init__(
            f"Agent '{agent_id}' is over its rate limit ({limit}); retry in {retry_after} s.",
            agent_id=agent_id,
            limit=limit,
            retry_after=retry_after,
        )


class ResultTooLarge(GatewayError):
    code = -32006
    name = "RESULT_TOO_LARGE"

    def __init__(self, server: str, tool: str, limit: int, size: int | None = None) -> None:
        super().__init__(
            f"Tool '{tool}' on server '{server}' returned more than the server's limit of {limit} "
            "bytes (max_result_bytes); ask for less, e.g. a page or a filter.",
            server=server,
            tool=tool,
            limit=limit,
            size=size,
        )


class RequestStateRefused(GatewayError):
    """A retry's `requestState` the gateway minted, used where it does not belong."""

    code = -32602
    name = "REQUEST_STATE_REFUSED"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The retry's requestState is refused: {reason}.", reason=reason)


class CallNotHeld(GatewayError):
    """A retry that reached a gateway process not holding the call it continues."""

    code = -32008
    name = "CALL_NOT_HELD"

    def __init__(self, holder: str, here: str) -> None:
        if holder == here:
            message = (
                "The call this retry continues has ended or waited too long for it; make the call again."
            )
        else:
            message = (
                f"The call this retry continues is held by gateway replica '{holder}', not by "
                f"'{here}': route a session's requests to one replica, or make the call again."
            )
        super().__init__(message, holder=holder, replica=here)


class TooManyHeldCalls(GatewayError):
    """More calls waiting for their clients' answers than the gateway holds at once."""

    code = -32009
    name = "TOO_MANY_HELD_CALLS"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The gateway already holds {limit} calls waiting for their clients' answers "
            "(GATEWAY_MAX_HELD_CALLS); try again later.",
            limit=limit,
        )


# The codes JSON-RPC 2.0 reserves; any other code a downstream sends is its own business.
STANDARD_JSONRPC_CODES = {
    -32700: "parse error",
    -32600: "invalid request",
    -32601: "method not found",
    -32602: "invalid params",
    -32603: "internal error",
}


class DownstreamError(GatewayError):
    """A downstream's JSON-RPC error, retold in one clean sentence: its message can carry
    tracebacks and paths, so it goes to the gateway's log and never to the caller."""

    code = -32007
    name = "DOWNSTREAM_ERROR"

    def __init__(self, server: str, tool: str, downstream_code: int, request_id: str | None) -> None:
        standard = STANDARD_JSONRPC_CODES.get(downstream_code)
        if standard is not None:
            self.code = downstream_code
        kind = f" ({standard})" if standard else ""
        where = f" under request id {request_id}" if request_id else ""
        super().__init__(
            f"Server '{server}' answered '{tool}' with an error{kind}; the gateway's log has "
            f"its message{where}.",
            server=server,
            tool=tool,
            request_id=request_id,
        )
