"""`list_changed` for clients: each session is told when what its agent sees has changed.

A downstream's own `list_changed`, a reconnect that brings a different catalog, and a rules
reload all mark the catalog changed; after a short debounce every session that has listed a
kind is sent that kind's notification only if the digest of its agent's view differs from the
one it was last shown. So a session never hears about another agent's tools, and a change that
does not touch an agent's view sends it nothing.

Handshake-era sessions are tracked from their first listing; a 2026-07-28 request has no
channel outside itself, so that era's clients are tracked by their `subscriptions/listen`
streams (`sessions/listen.py`) from the moment each opens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from mcp.server.session import ServerSession
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agent_mcp_gateway.protocol import Kind

log = logging.getLogger("agent_mcp_gateway.notifications")

DEBOUNCE_SECONDS = 0.2
Fingerprint = Callable[[str, Kind], str]
Send = Callable[[Kind], Awaitable[None]]  # tells one listener that a kind changed
LOCAL_PREFIX = "local:"


def session_key(session_id: str | None, session: ServerSession) -> str:
    """What names a client connection: its HTTP session id, else (stdio, in-process) the
    connection's initialize parameters, which live exactly as long as the connection."""
    return session_id or f"{LOCAL_PREFIX}{id(session.client_params)}"


@dataclass(slots=True)
class _Listener:
    send: Send
    agent_id: str
    shown: dict[Kind, str] = field(default_factory=dict)


class ListChanged:
    """Who has seen which view, and the debounced check that tells them it changed."""

    def __init__(
        self, fingerprint: Fingerprint, alive: Callable[[str], bool], delay: float = DEBOUNCE_SECONDS
    ) -> None:
        self._fingerprint = fingerprint
        self._alive = alive
        self._delay = delay
        self._listeners: dict[str, _Listener] = {}
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False

    def __len__(self) -> int:
        return len(self._listeners)

    def shown(self, key: str, session: ServerSession, agent_id: str, kind: Kind) -> None:
        """Record that the session `key` was just shown `agent_id`'s view of `kind`."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return
        listener = self._listeners.get(key)
        send = partial(_send, session)
        if listener is None or listener.agent_id != agent_id:
            listener = self._listeners[key] = _Listener(send, agent_id)
        listener.send = send
        listener.shown[kind] = self._fingerprint(agent_id, kind)

    def watch(self, key: str, agent_id: str, kinds: tuple[Kind, ...], send: Send) -> None:
        """Track a listen stream `key` from now on: it is told when `agent_id`'s view of one of
        `kinds` differs from what it is now."""
        listener = self._listeners[key] = _Listener(send, agent_id)
        for kind in kinds:
            listener.shown[kind] = self._fingerprint(agent_id, kind)

    def forget(self, key: str) -> None:
        self._listeners.pop(key, None)

    def changed(self) -> None:
        """Something any view is made of changed: check every listener after the debounce."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(self._delay)
            await self._check()

    async def _check(self) -> None:
        self.prune()
        digests: dict[tuple[str, Kind], str] = {}  # one digest per agent and kind per pass
        for key, listener in list(self._listeners.items()):
            for kind, digest in list(listener.shown.items()):
                now = digests.get((listener.agent_id, kind))
                if now is None:
                    now = digests[(listener.agent_id, kind)] = self._fingerprint(listener.agent_id, kind)
                if now == digest:
                    continue
                listener.shown[kind] = now
                try:
                    await listener.send(kind)
                except Exception as exc:  # a session that went away takes its record with it
                    log.debug("list_changed not delivered", extra={"error": repr(exc)})
                    self._listeners.pop(key, None)
                    break

    def prune(self) -> None:
        """Forget HTTP sessions that have ended (the session sweeper calls this too)."""
        for key in [key for key in self._listeners if not self._alive(key)]:
            del self._listeners[key]

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)


async def _send(session: ServerSession, kind: Kind) -> None:
    if kind == "tools":
        await session.send_tool_list_changed()
    elif kind == "prompts":
        await session.send_prompt_list_changed()
    else:
        await session.send_resource_list_changed()
