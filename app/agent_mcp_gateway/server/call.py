"""A planned gateway operation, as it travels down the pipeline's middlewares.

The view middleware decides what a request is (`Call`) and hands it on in a `Planned`
context, fastmcp's `MiddlewareContext` with the call attached; the middlewares below act only
on planned requests and pass everything else on untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastmcp.server.middleware import MiddlewareContext

from agent_mcp_gateway.access.identity import RequestFacts, Resolution
from agent_mcp_gateway.gateway import Snapshot
from agent_mcp_gateway.operation import Operation

T = TypeVar("T")


@dataclass(slots=True)
class Call:
    """One operation to run: its name and target, who asks (resolved once), the configuration
    it runs under, and the work itself once the operation is open and its agent settled."""

    name: str
    facts: RequestFacts
    snapshot: Snapshot
    resolution: Resolution
    run: Callable[[Operation], Awaitable[Any]]
    claim: object = None  # the agent_id argument the caller passed, if any
    span_name: str | None = None
    server: str | None = None
    tool: str | None = None
    identify: bool = True  # False for the debug tool, which acts as no agent
    cheap: bool = False  # listings: charged to the agent's allowance for cheap requests
    op: Operation | None = None  # set once the operation is open


@dataclass(kw_only=True, frozen=True)
class Planned(MiddlewareContext[T]):
    call: Call


def planned(context: MiddlewareContext[Any]) -> Call | None:
    """The call a context carries, or None for a request the gateway leaves to fastmcp."""
    return context.call if isinstance(context, Planned) else None


def text(value: object) -> str | None:
    """A caller-supplied name as the audit line keeps it: strings only, at most 200 characters."""
    return value[:200] if isinstance(value, str) else None
