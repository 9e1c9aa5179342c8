"""The edge's refusals: JSON-RPC shaped error bodies answering the request's id, so MCP
clients can show the message whichever middleware refused."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope

from agent_mcp_gateway.access.identity import facts_of
from agent_mcp_gateway.protocol import (
    INVALID_REQUEST,
)


def error_response(
    scope: Scope, status: int, message: str, name: str, code: int = INVALID_REQUEST, **fields: Any
) -> JSONResponse:
    """A JSON-RPC shaped error body (answering the request's id), so MCP clients can show the
    message."""
    return JSONResponse(
        {
            "jsonrpc": "2.0",
            "id": facts_of(scope).rpc_id,
            "error": {"code": code, "message": message, "data": {"code": name, **fields}},
        },
        status_code=status,
    )
