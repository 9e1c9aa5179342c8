"""Where what a downstream server sends goes: the caller it belongs to, through a `Relay`.

The downstream side declares what it needs of a caller (`Relay`) and `server.relay.ClientRelay`
implements it, so this package never imports the MCP server that sits above it.
`current_call` names the call a message belongs to, as the transports and the SDK session's
handlers see it.
"""

from __future__ import annotations

import contextvars
from typing import Protocol

import mcp_types as mt

# The call a downstream message belongs to, as the session's handlers see it. The SDK runs each
# notification handler in the context its transport sent the message from; the stdio transport
# sets the variable there when it can tell the call (see `stdio._Connection._owner`).
current_call: contextvars.ContextVar[object | None] = contextvars.ContextVar("current_call", default=None)


class Relay(Protocol):
    """The one client a call was made by: what a downstream sends during it goes there only
    (and, for an isolated session, what it sends between its owner's calls: `detached`)."""

    @property
    def wants_progress(self) -> bool:
        """Whether the caller asked for progress (gave a progress token)."""
        ...

    async def progress(self, progress: float, total: float | None, message: str | None) -> None: ...

    async def log(self, params: mt.LoggingMessageNotificationParams) -> None: ...

    async def elicit(self, params: mt.ElicitRequestParams) -> mt.ElicitResult: ...

    async def sample(self, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult: ...

    async def list_roots(self) -> mt.ListRootsResult: ...

    @property
    def declares_roots(self) -> bool:
        """Whether the client can answer `roots/list`."""
        ...

    @property
    def client(self) -> str:
        """The id of the client connection it reaches, to tell clients apart."""
        ...

    @property
    def live(self) -> bool:
        """Whether it can still carry a request: its call is still running (or it is detached)."""
        ...

    def detached(self) -> Relay:
        """The same client outside any call (its standalone stream): where an isolated
        session's messages sent between its owner's calls go."""
        ...
