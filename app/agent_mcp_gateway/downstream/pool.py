"""The downstream sessions by server and owner: who a call's session belongs to, when it starts,
when it is closed, and how many a server may run.

A server's `isolation` (`.mcp.json`, default `GATEWAY_ISOLATION`) says whose session a call
uses: `agent` (one per agent; for stdio a process per agent), `session` (one per client
session; without one, as on 2026-07-28, one per agent) or `shared` (one for all agents). What a
server keeps per session (roots, state, log level, subscriptions) and what it sends on it then
belongs to one owner only (`Downstream.relay_for`).

Every server also keeps its shared session, started at once: it reads the catalog and answers
health and readiness before any agent calls, and it serves the calls of a `shared` server. The
sessions of owners start on their first use, are closed after `idle_timeout` seconds unused
(and, in `session` mode, once their client session has ended), and at most `max_instances` run
per server: past that a call fails at once with SERVER_UNAVAILABLE instead of waiting.

An agent with credentials of its own for a server (the rules file's
`agents.<id>.credentials.<server>`) always gets a session of its own there, whatever the
isolation: its headers are sent on that session only. A server marked `"credentials":
"per-agent"` serves no agent without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent_mcp_gateway.config import DownstreamCredentials, Isolation, ServerConfig
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.session import Downstream, Shared
from agent_mcp_gateway.downstream.watchdog import Watchdog
from agent_mcp_gateway.errors import ServerUnavailable
from agent_mcp_gateway.observe.metrics import DOWNSTREAM_INSTANCES

log = logging.getLogger("agent_mcp_gateway.downstream")

SESSION_KEY = "session:"
AGENT_KEY = "agent:"
REAP_MIN_SECONDS = 0.1  # the reaper looks at most this often, and at least every 10 s
REAP_MAX_SECONDS = 10.0
# An agent's own credentials for a server, as the current rules give them (None: it has none).
CredentialsOf = Callable[[str, str], DownstreamCredentials | None]


@dataclass(frozen=True, slots=True)
class Owner:
    """Whom a call is made for: the agent, its client session (None without one) and, for an
    isolated session's messages between calls, the calling client."""

    agent_id: str
    session_id: str | None = None
    relay: Relay | None = None


def owner_key(isolation: Isolation, owner: Owner, personal: bool = False) -> str:
    """The key of `owner`'s session of a server with this isolation; "" for the shared one.
    `personal`: the owner has credentials of its own there, so never the shared one."""
    if isolation == "shared" and not personal:
        return ""
    if isolation == "session" and owner.session_id:
        return f"{SESSION_KEY}{owner.session_id}"
    return f"{AGENT_KEY}{owner.agent_id}"


class DownstreamPool:
    """All downstream sessions: each server's shared one (`servers`), and the isolated ones of
    its owners (`owned`); reconciled against each new configuration."""

    def __init__(self, shared: Shared, credentials: CredentialsOf | None = None) -> None:
        self.shared = shared
        self.credentials: CredentialsOf = credentials or (lambda agent_id, server: None)
        self.servers: dict[str, Downstream] = {}
        self.owned: dict[str, dict[str, Downstream]] = {}
        self.watchdog = Watchdog()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    def get(self, name: str) -> Downstream | None:
        """A server's shared session: its catalog and health, whoever asks."""
        return self.servers.get(name)

    def instance(self, name: str, owner: Owner) -> Downstream:
        """The session `owner`'s calls to server `name` use, started on first use.

        Raises ServerUnavailable for a server not configured, or one already running its
        `max_instances` sessions.
        """
        server = self.servers.get(name)
        if server is None:
            raise ServerUnavailable(name, "not configured on this gateway")
        credentials = self._credentials(name, server.config, owner)
        key = owner_key(server.isolation, owner, credentials is not None or server.config.per_agent)
        if not key:
            return server
        owned = self.owned.setdefault(name, {})
        instance = owned.get(key)
        if instance is not None and instance.credentials != credentials:
            # A reload changed the agent's credentials (rotated, say): the session made with
            # the old ones is closed and the next one is made with the new.
            del owned[key]
            self._close_later(instance)
            instance = None
        if instance is None:
            limit = server.config.max_instances or self.shared.max_instances
            if len(owned) >= limit:
                raise ServerUnavailable(
                    name,
                    f"it already runs its limit of {limit} isolated sessions (max_instances); "
                    "try again once an idle one is closed",
                )
            instance = owned[key] = Downstream(
                name, server.config, self.watchdog, self.shared, key, credentials, owner.agent_id
            )
            instance.start()
            self._counted(name)
            log.info("downstream instance started", extra={"server": name, "instances": len(owned)})
        instance.claim(owner.relay)
        return instance

    def listing(self, name: str, owner: Owner) -> Downstream | None:
        """Where `owner` reads server `name`'s catalog: its own session once that is up (its
        lists may differ from others'), else the shared one, which lists for everyone; None for
        a server not configured. On a server where every agent has a session of its own
        (`per_agent`), whose shared session has no identity to list with, the owner's own
        session is started for its list."""
        server = self.servers.get(name)
        if server is None:
            return None
        credentials = self.credentials(owner.agent_id, name)
        personal = credentials is not None or server.config.per_agent
        own = self.owned.get(name, {}).get(owner_key(server.isolation, owner, personal))
        if server.config.per_agent and (credentials is not None or server.config.credentials is None):
            if own is not None and own.credentials == credentials:
                return own
            try:
                return self.instance(name, owner)
            except ServerUnavailable:  # at its instance limit: the shared list, until one closes
                return server
        return own if own is not None and own.state == "up" else server

    def revise_credentials(self) -> int:
        """After a reload: close the sessions made with credentials their agent no longer has
        (removed or rotated), so no call goes out with them again; returns how many."""
        revised = 0
        for name, owned in self.owned.items():
            for key, instance in list(owned.items()):
                if instance.credentials is None or instance.agent_id is None:
                    continue
                if self.credentials(instance.agent_id, name) != instance.credentials:
                    del owned[key]
                    self._close_later(instance)
                    revised += 1
            self._counted(name)
        return revised

    def _close_later(self, instance: Downstream) -> None:
        task = asyncio.create_task(instance.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _credentials(self, name: str, config: ServerConfig, owner: Owner) -> DownstreamCredentials | None:
        """`owner`'s agent's own credentials for server `name`; SERVER_UNAVAILABLE when the
        server takes per-agent credentials only and the agent has none."""
        credentials = self.credentials(owner.agent_id, name)
        if credentials is None and config.credentials == "per-agent":
            raise ServerUnavailable(
                name,
                f"it takes per-agent credentials and agent {owner.agent_id!r} has none "
                f"(agents.{owner.agent_id}.credentials.{name} in the rules file)",
            )
        return credentials

    def roots_changed(self, client: str) -> int:
        """A client said its roots changed: tell the servers of the isolated sessions whose
        owner's client it is; returns how many were told."""
        told = [
            instance
            for owned in self.owned.values()
            for instance in owned.values()
            if instance.outside is not None and instance.outside.client == client
        ]
        for instance in told:
            instance.roots_changed()
        return len(told)

    def instances(self, name: str) -> list[Downstream]:
        """Every session of server `name`: its shared one first, then its owners'."""
        server = self.servers.get(name)
        shared = [server] if server is not None else []
        return shared + list(self.owned.get(name, {}).values())

    def every(self) -> Iterator[Downstream]:
        """Every session of every server."""
        for name in list(self.servers):
            yield from self.instances(name)

    async def apply(self, configs: dict[str, ServerConfig]) -> None:
        """Start new servers, restart changed ones (closing all their sessions), close removed
        ones; keep the rest, re-reading their catalogs."""
        stale = [name for name, server in self.servers.items() if configs.get(name) != server.config]
        closing = [instance for name in stale for instance in self.instances(name)]
        for name in stale:
            del self.servers[name]
            self.owned.pop(name, None)
        await asyncio.gather(*(instance.close() for instance in closing))
        for name, config in configs.items():
            if name not in self.servers:
                server = Downstream(name, config, self.watchdog, self.shared)
                self.servers[name] = server
                server.start()
                self._counted(name)
            else:
                for instance in self.instances(name):
                    instance.schedule_refresh()
        for name in stale:
            if name not in configs:
                DOWNSTREAM_INSTANCES.remove(name)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="downstream:reaper")

    async def reap(self) -> int:
        """Close the owners' sessions idle past their `idle_timeout`, and those whose client
        session has ended; returns how many were closed."""
        now = time.monotonic()
        alive = self.shared.session_alive
        reaped: list[Downstream] = []
        for name, owned in self.owned.items():
            for key, instance in list(owned.items()):
                idle = instance.config.idle_timeout or self.shared.idle_timeout
                session_id = key.removeprefix(SESSION_KEY) if key.startswith(SESSION_KEY) else None
                ended = session_id is not None and alive is not None and not alive(session_id)
                if ended or instance.idle_for(now) > idle:
                    del owned[key]
                    reaped.append(instance)
            self._counted(name)
        await asyncio.gather(*(instance.close() for instance in reaped))
        for instance in reaped:
            log.info("downstream instance closed", extra={"server": instance.name, "reason": "idle or ended"})
        return len(reaped)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval())
            try:
                await self.reap()
            except Exception:  # one failed close must not stop the reaping of the rest
                log.exception("reaping downstream instances failed")

    def _reap_interval(self) -> float:
        """A quarter of the shortest idle timeout, within bounds: an instance outlives its
        timeout by at most that much."""
        default = self.shared.idle_timeout
        shortest = min(
            (server.config.idle_timeout or default for server in self.servers.values()), default=default
        )
        return min(REAP_MAX_SECONDS, max(REAP_MIN_SECONDS, shortest / 4))

    def _counted(self, name: str) -> None:
        count = len(self.owned.get(name, {}))
        server = self.servers.get(name)
        if server is not None:
            server.instances = count
        DOWNSTREAM_INSTANCES.labels(name).set(count)

    @property
    def all_tried(self) -> bool:
        return all(server.tried.is_set() for server in self.servers.values())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        closing = list(self.every())
        self.servers, self.owned = {}, {}
        await asyncio.gather(*(instance.close() for instance in closing), *self._closing)
        await asyncio.to_thread(self.watchdog.close)

    def __iter__(self) -> Iterator[Downstream]:
        """Each server's shared session (its health, catalog and instance count)."""
        return iter(list(self.servers.values()))
