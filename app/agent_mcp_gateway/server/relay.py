"""What a downstream server sends during a call, relayed to the client that made the call.

Downstream messages arrive on the downstream client's task, where the caller's request context
(and with it fastmcp's `Context`) is not set, so the caller's session, request id and progress
token are captured while its request is current. Progress, log messages and the server's own
requests (elicitation, sampling, roots) then go to that caller and to no one else: the
request-scoped channel of the caller's request, never a broadcast.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import mcp_types as mt
from fastmcp import Context
from mcp import MCPError
from mcp.server.session import ServerSession
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from agent_mcp_gateway.protocol import METHOD_NOT_FOUND
from agent_mcp_gateway.server.tasks import without_tasks

R = TypeVar("R", bound=BaseModel)


class ClientRelay:
    def __init__(self, ctx: Context) -> None:
        request = ctx.request_context
        meta = request.meta if request is not None else None
        self._token = meta.get("progressToken") if meta else None
        # What a 2026-07-28 caller declares it can answer, sent with each of its requests (less
        # the tasks extension, which the gateway does not relay: `server.tasks`).
        declared = meta.get(mt.CLIENT_CAPABILITIES_META_KEY) if meta else None
        self.capabilities: dict[str, Any] | None = without_tasks(declared)
        self._session: ServerSession = ctx.session
        self._request_id: str | None = ctx.request_id
        # Stable for a handshake-era client connection (the SDK builds a session per request).
        self._client = ctx.session_id
        # A 2026-07-28 retry's answers to the questions of the round before (`server.held`).
        self.request_state: str | None = ctx.request_state
        self.input_responses: dict[str, Any] | None = ctx.input_responses

    @property
    def wants_progress(self) -> bool:
        """Whether the caller asked for progress (gave a progress token)."""
        return self._token is not None

    @property
    def declares_roots(self) -> bool:
        session = self._session
        capability = mt.ClientCapabilities(roots=mt.RootsCapability())
        return session.protocol_version not in MODERN_PROTOCOL_VERSIONS and session.check_client_capability(
            capability
        )

    @property
    def modern(self) -> bool:
        """Whether the caller speaks 2026-07-28, where questions go back in the call's result."""
        return self._session.protocol_version in MODERN_PROTOCOL_VERSIONS

    @property
    def client(self) -> str:
        return self._client

    @property
    def live(self) -> bool:
        return self._request_id is None or self._session.can_send_request

    def detached(self) -> ClientRelay:
        """This client outside its call: messages go on its standalone stream."""
        outside = copy.copy(self)
        outside._token = outside._request_id = None
        return outside

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self._token is None:
            return
        await self._session.send_progress_notification(
            progress_token=self._token,
            progress=progress,
            total=total,
            message=message,
            related_request_id=self._request_id,
        )

    async def log(self, params: mt.LoggingMessageNotificationParams) -> None:
        await self._session.send_log_message(
            level=params.level,
            data=params.data,
            logger=params.logger,
            related_request_id=self._request_id,
        )

    async def elicit(self, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        self._require(mt.ClientCapabilities(elicitation=mt.ElicitationCapability()), "elicitation")
        request = mt.ElicitRequest(params=params)
        return await self._ask(request, mt.ElicitResult)

    async def sample(self, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        self._require(mt.ClientCapabilities(sampling=mt.SamplingCapability()), "sampling")
        return await self._ask(mt.CreateMessageRequest(params=params), mt.CreateMessageResult)

    async def list_roots(self) -> mt.ListRootsResult:
        self._require(mt.ClientCapabilities(roots=mt.RootsCapability()), "roots")
        return await self._ask(mt.ListRootsRequest(), mt.ListRootsResult)

    def _require(self, capability: mt.ClientCapabilities, what: str) -> None:
        """A request on the call's stream: none exists on 2026-07-28, where the questions of a
        call go back in its result (`server.held`)."""
        if self.modern:
            raise MCPError(
                METHOD_NOT_FOUND,
                f"the calling client speaks {self._session.protocol_version}, where a server "
                f"cannot send it {what} requests outside a call",
            )
        self.require(capability, what)

    def require(self, capability: mt.ClientCapabilities, what: str) -> None:
        """The downstream gets a clear error when the caller cannot answer, as it would from a
        client of its own, instead of a request that never arrives."""
        if not self._session.check_client_capability(capability):
            raise MCPError(METHOD_NOT_FOUND, f"the calling client does not support {what}")

    async def _ask(self, request: Any, result_type: type[R]) -> R:
        return await self._session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=self._request_id)
        )
