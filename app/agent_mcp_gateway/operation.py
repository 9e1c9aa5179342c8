"""The gateway operation in progress: who asked for what, and what decided it.

The pipeline opens one per request the gateway serves itself (`server.operations`); identity,
the views and error handling fill it in, and `observe.record` makes it the audit line, the
metric samples and the span when the call ends.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent_mcp_gateway.gateway import Snapshot

Decision = Literal["ALLOW", "DENY", "ERROR"]


@dataclass(slots=True)
class Operation:
    name: str
    request_id: str
    session_id: str | None = None
    agent_id: str = ""
    server: str | None = None
    tool: str | None = None
    rule: str | None = None
    decision: Decision = "ALLOW"
    error_code: str | None = None
    auth: str | None = None  # how the agent was established: token, jwt, claim or pinned
    credential: str | None = None  # the credential's fingerprint, never the credential
    claimed_agent_id: str | None = None  # what the caller said it was, kept when refused
    trace_id: str | None = None  # the W3C trace id, when the call is traced
    # The configuration the operation runs under, taken when it starts (`Gateway.pinned`):
    # identity, policy, failure mapping and audit of one call never see two configurations.
    snapshot: Snapshot | None = None


_current: ContextVar[Operation] = ContextVar("gateway_operation")


def current_operation() -> Operation:
    return _current.get()


def begin(operation: Operation) -> Token[Operation]:
    return _current.set(operation)


def end(token: Token[Operation]) -> None:
    _current.reset(token)
