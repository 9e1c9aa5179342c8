"""The protocol's names and numbers, defined once: JSON-RPC error codes, HTTP header names,
the service's paths and the kinds of list a server offers.

Every module that answers, reads or sends one of these imports it from here, so a reviewer
checks them in one place (they were spelled out 14 times across 8 modules). The gateway's own
error codes (-32000 and up) stay with their errors in `errors.py`.
"""

from __future__ import annotations

from typing import Literal

# JSON-RPC 2.0 error codes (https://www.jsonrpc.org/specification#error_object), and MCP's.
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # the first implementation-defined code: a closed connection, a drain

# HTTP header names, lower case as ASGI carries them.
SESSION_HEADER = "mcp-session-id"
PROTOCOL_VERSION_HEADER = "mcp-protocol-version"
AGENT_HEADER = "x-agent-id"
REQUEST_ID_HEADER = "x-request-id"
# As the CORS middleware exposes them to browser clients.
EXPOSED_HEADERS = ("Mcp-Session-Id", "Retry-After", "X-Request-Id", "WWW-Authenticate")

# Paths the HTTP service answers.
MCP_PATH = "/mcp"
MCP_PATHS = frozenset({MCP_PATH, "/mcp/"})
METADATA_PATH = "/.well-known/oauth-protected-resource"  # RFC 9728

# The lists a server offers, which change (`list_changed`) and are cached per server.
Kind = Literal["tools", "prompts", "resources"]
KINDS: tuple[Kind, ...] = ("tools", "prompts", "resources")

# The tasks extension (SEP-2663; core `tasks` in 2025-11-25), which the gateway does not relay
# (`server.tasks` says why): never advertised, never declared to a downstream for a caller.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
