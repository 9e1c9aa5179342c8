"""The gateway's record of each HTTP MCP session: the agent it is bound to and its timestamps.

The SDK's session manager owns the transport (ids, 404s, DELETE, idle expiry); this registry
adds what it lacks, the agent binding, and expires its records on the same idle TTL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent_mcp_gateway.observe.metrics import ACTIVE_SESSIONS


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    agent_id: str | None = None
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    # What the client declared in its `initialize` (None when it was not seen): whether the
    # server could ask it anything decides if its calls may take the call lane (`server.lane`).
    capabilities: dict[str, Any] | None = None


class SessionRegistry:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._records: dict[str, SessionRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[SessionRecord]:
        """Most recently used first."""
        return sorted(self._records.values(), key=lambda record: record.last_used, reverse=True)

    def open(self, session_id: str, agent_id: str | None = None) -> SessionRecord:
        record = self._records.get(session_id)
        if record is None:
            record = self._records[session_id] = SessionRecord(session_id, agent_id)
            ACTIVE_SESSIONS.set(len(self._records))
        return record

    def count(self, agent_id: str) -> int:
        """How many open sessions are bound to `agent_id` (a scan: asked once per `initialize`,
        over at most the SDK's 10,000 sessions, about 0.5 ms)."""
        return sum(1 for record in self._records.values() if record.agent_id == agent_id)

    def get(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    def touch(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        if record is not None:
            record.last_used = time.time()
        return record

    def close(self, session_id: str) -> None:
        if self._records.pop(session_id, None) is not None:
            ACTIVE_SESSIONS.set(len(self._records))

    def expire(self, now: float | None = None) -> int:
        """Drop records idle longer than the TTL; returns how many were dropped."""
        cutoff = (now or time.time()) - self.ttl_seconds
        stale = [sid for sid, record in self._records.items() if record.last_used < cutoff]
        for sid in stale:
            del self._records[sid]
        if stale:
            ACTIVE_SESSIONS.set(len(self._records))
        return len(stale)
