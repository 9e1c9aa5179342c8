"""The inbound JWT each agent last authenticated with, for RFC 8693 token exchange.

A downstream that takes exchanged tokens sees the agent (the exchanged token names it) and never
the agent's own token: the gateway hands that token only to the authorization server, as the
exchange's `subject_token`. It is kept in this process's memory until it expires, never written
or logged.
"""

from __future__ import annotations

import time


class SubjectTokens:
    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float | None]] = {}

    def remember(self, agent_id: str, token: str, expires_at: float | None) -> None:
        """A verified JWT `agent_id` just presented: the one to exchange from now on."""
        self._tokens[agent_id] = (token, expires_at)

    def current(self, agent_id: str) -> str | None:
        """`agent_id`'s latest token while it is valid, else None (and it is forgotten)."""
        found = self._tokens.get(agent_id)
        if found is None:
            return None
        token, expires_at = found
        if expires_at is not None and time.time() >= expires_at:
            del self._tokens[agent_id]
            return None
        return token
