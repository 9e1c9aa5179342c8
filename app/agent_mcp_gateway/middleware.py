"""The MCP-level edge: every gateway tool call passes through here exactly once.

It resolves identity, opens the operation, and on the way out turns gateway failures into
JSON-RPC errors (fastmcp masks exceptions raised inside a tool into `isError` results; only an
`MCPError` raised from middleware keeps its code), turns anything unexpected into a clean
internal error, and writes the audit line and metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mcp_types as mt
from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsError
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from mcp import MCPError
from pydantic import ValidationError

from . import logs
from .audit import AuditRecord
from .auth import PRINCIPAL_SCOPE_KEY, Principal
from .errors import DeniedByPolicy, GatewayError, InvalidAgentId, RateLimited
from .gateway import Gateway
from .identity import AGENT_HEADER, checked_claim, resolve_agent
from .metrics import ERRORS, POLICY_DECISIONS, RATE_LIMITED, bounded, operation_series
from .operation import Operation, begin, end
from .ratelimit import RateLimits

log = logging.getLogger("agent_mcp_gateway")

AGENT_TOOLS = frozenset({"list_servers", "get_server_tools", "execute_tool"})
DEBUG_TOOLS = frozenset({"get_gateway_status"})
GATEWAY_TOOLS = AGENT_TOOLS | DEBUG_TOOLS
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class GatewayMiddleware(Middleware):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.rate_limits = RateLimits(gateway.settings.rate_limit)
        # stdio with GATEWAY_AGENT: the process acts as that agent and nothing else.
        self.pinned = Principal(gateway.settings.agent, "pinned") if gateway.settings.agent else None

    async def on_call_tool(
        self,
        context: MiddlewareContext[mt.CallToolRequestParams],
        call_next: CallNext[mt.CallToolRequestParams, Any],
    ) -> Any:
        name = context.message.name
        if name not in GATEWAY_TOOLS:
            return await call_next(context)
        arguments = context.message.arguments or {}
        header_agent, session_id, credential = _http_identity()
        request_id = logs.request_id.get() or logs.new_request_id()
        logs.request_id.set(request_id)
        op = Operation(name, request_id, session_id)
        op.server = _text(arguments.get("server"))
        op.tool = _text(arguments.get("tool"))
        token = begin(op)
        started = time.perf_counter()
        try:
            if name in AGENT_TOOLS:
                await self._identify(op, arguments.get("agent_id"), header_agent, credential or self.pinned)
            return await call_next(context)
        except Exception as exc:
            raise self._fail(op, _unwrap(exc)) from None
        finally:
            self._record(op, time.perf_counter() - started)
            end(token)

    async def _identify(
        self, op: Operation, agent_id: object, header_agent: str | None, credential: Principal | None
    ) -> None:
        """Settle who the operation acts as, then charge it to that agent's rate limit."""
        if isinstance(header_agent, str) or isinstance(agent_id, str):
            op.claimed_agent_id = _text(agent_id) or _text(header_agent)
        claimed = checked_claim(agent_id, header_agent)
        session = self.gateway.sessions.get(op.session_id) if op.session_id else None
        snapshot = self.gateway.snapshot
        principal = resolve_agent(snapshot.engine, claimed, credential, session)
        op.agent_id, op.auth, op.credential = principal.agent_id, principal.method, principal.fingerprint
        rules = snapshot.config.rules.agents.get(principal.agent_id)
        await self.rate_limits.charge(principal.agent_id, rules.rate_limit if rules else None)

    def _fail(self, op: Operation, exc: BaseException) -> MCPError:
        if isinstance(exc, GatewayError):
            denied = isinstance(exc, DeniedByPolicy | InvalidAgentId | RateLimited)
            op.decision = "DENY" if denied else "ERROR"
            op.error_code = exc.name
            if isinstance(exc, DeniedByPolicy):
                op.rule = exc.fields["rule"]
            elif isinstance(exc, RateLimited):
                op.rule = "rate_limit"
                RATE_LIMITED.labels(bounded(op.agent_id, self.gateway.config.rules.agents)).inc()
            return exc.to_mcp_error()
        op.decision = "ERROR"
        if isinstance(exc, ValidationError | ArgumentsError):
            op.error_code = "INVALID_PARAMS"
            return MCPError(INVALID_PARAMS, _invalid_arguments(op.name, exc))
        if isinstance(exc, MCPError):
            op.error_code = f"JSONRPC_{exc.code}"
            return exc
        op.error_code = "INTERNAL_ERROR"
        log.exception("gateway operation failed", extra={"operation": op.name})
        return MCPError(
            INTERNAL_ERROR,
            f"The gateway hit an internal error; its log has details under request id {op.request_id}.",
        )

    def _record(self, op: Operation, seconds: float) -> None:
        snapshot = self.gateway.snapshot
        agent = bounded(op.agent_id, snapshot.config.rules.agents)
        server = bounded(op.server, snapshot.config.servers)
        count, duration = operation_series(op.name, agent, server, op.decision)
        count.inc()
        duration.observe(seconds)
        if op.rule is not None:
            POLICY_DECISIONS.labels(agent, "DENY" if op.error_code == "DENIED_BY_POLICY" else "ALLOW").inc()
        if op.error_code is not None:
            ERRORS.labels(op.error_code).inc()
        self.gateway.audit.write(
            AuditRecord(
                agent_id=op.agent_id or None,
                operation=op.name,
                server=op.server,
                tool=op.tool,
                decision=op.decision,
                rule=op.rule,
                error_code=op.error_code,
                latency_ms=round(seconds * 1000, 3),
                session_id=op.session_id,
                request_id=op.request_id,
                auth=op.auth,
                credential=op.credential,
                claimed_agent_id=op.claimed_agent_id if op.claimed_agent_id != op.agent_id else None,
            )
        )


def _unwrap(exc: BaseException) -> BaseException:
    """The real failure behind fastmcp's ToolError and ValidationError wrappers."""
    while isinstance(exc, ToolError | ArgumentsError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _http_identity() -> tuple[str | None, str | None, Principal | None]:
    """The claimed agent, the session id and the verified credential of an HTTP request."""
    try:
        request = get_http_request()
    except RuntimeError:  # stdio: no HTTP request, no session binding
        return None, None, None
    return (
        request.headers.get(AGENT_HEADER),
        request.headers.get("mcp-session-id"),
        request.scope.get(PRINCIPAL_SCOPE_KEY),
    )


def _text(value: object) -> str | None:
    return value[:200] if isinstance(value, str) else None


def _invalid_arguments(tool: str, exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return f"Invalid arguments for {tool}: {problems}."
    return f"Invalid arguments for {tool}."
