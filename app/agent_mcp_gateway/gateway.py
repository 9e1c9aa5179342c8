"""The gateway's runtime state: the live configuration, its policy engine, the downstream pool,
the audit log and the session registry, with reload as validate-then-swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_mcp_gateway import config as config_module
from agent_mcp_gateway.access.credentials import Authenticator
from agent_mcp_gateway.access.identity import claims_warning, identity_problem
from agent_mcp_gateway.access.logins import LoginStore, logins_path
from agent_mcp_gateway.access.pins import PinStore, pins_path
from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.access.ratelimit import RateLimits
from agent_mcp_gateway.access.subject_tokens import SubjectTokens
from agent_mcp_gateway.catalog import Catalog
from agent_mcp_gateway.config import ConfigError, GatewayConfig
from agent_mcp_gateway.downstream.messages import Relay
from agent_mcp_gateway.downstream.pool import DownstreamPool, Owner
from agent_mcp_gateway.downstream.session import Downstream, Shared
from agent_mcp_gateway.errors import GatewayError, InvalidAgentId, ServerUnavailable
from agent_mcp_gateway.observe.audit import AuditLog
from agent_mcp_gateway.observe.metrics import CONFIG_LAST_RELOAD_OK, CONFIG_RELOADS, SESSION_LIMIT
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.protocol import Kind
from agent_mcp_gateway.sessions.bus import ChangeBus
from agent_mcp_gateway.sessions.list_changed import LOCAL_PREFIX, ListChanged
from agent_mcp_gateway.sessions.listen import ListenStreams
from agent_mcp_gateway.sessions.registry import SessionRegistry
from agent_mcp_gateway.sessions.subscriptions import Subscriptions
from agent_mcp_gateway.settings import Settings

log = logging.getLogger("agent_mcp_gateway")

SESSION_CAP = 10_000  # the SDK session manager's own limit


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A configuration and what is compiled from it, swapped as one reference."""

    config: GatewayConfig
    engine: PolicyEngine
    authenticator: Authenticator

    @classmethod
    def build(cls, config: GatewayConfig, settings: Settings) -> Snapshot:
        engine = PolicyEngine(config.rules, settings.default_agent)
        return cls(config, engine, Authenticator(config.rules, settings.jwt_max_lifetime))


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    at: float
    source: str
    ok: bool
    error: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


class UnsafeIdentity(Exception):
    """Rules that cannot serve with these settings (see `identity_problem`): one sentence."""


def load_config(settings: Settings) -> GatewayConfig:
    """Load and validate both files for these settings.

    Raises `ConfigError` for a file that cannot be used and `UnsafeIdentity` for rules that
    would open the service to unauthenticated claims or drop a pinned agent; `run.serve` turns
    either into one line and exit status 2.
    """
    loaded = config_module.load(settings.mcp_config, settings.rules)
    problem = identity_problem(settings, loaded.rules)
    if problem is not None:
        raise UnsafeIdentity(problem)
    return loaded


class Gateway:
    def __init__(self, config: GatewayConfig, settings: Settings) -> None:
        self.settings = settings
        self.snapshot = Snapshot.build(config, settings)
        self.pins = PinStore(pins_path(settings))
        shared = Shared(
            self.pins,
            self.settings.connect_timeout,
            self.settings.ping_interval,
            self.settings.ping_timeout,
            on_change=self._catalog_changed,
            on_update=self._resource_updated,
            isolation=settings.isolation,
            idle_timeout=settings.idle_timeout,
            max_instances=settings.max_instances,
            session_alive=lambda session_id: self.sessions.get(session_id) is not None,
            subject_token=lambda agent_id: self.subject_tokens.current(agent_id),
            logins=LoginStore(logins_path(settings), settings.credentials_key)
            if settings.credentials_key
            else None,
        )
        self.subject_tokens = SubjectTokens()
        self.pool = DownstreamPool(
            shared, lambda agent_id, server: self.snapshot.config.rules.credentials_for(agent_id, server)
        )
        self.list_changed = ListChanged(self.view_fingerprint, self.session_alive)
        self.listens = ListenStreams(settings.max_sessions_per_agent)
        self.subscriptions = Subscriptions(
            self.may_use, self.session_alive, self._unsubscribe, settings.max_subscriptions
        )
        shared_redis = settings.rate_limit_storage if settings.rate_limit_storage != "memory" else None
        self.bus = ChangeBus(shared_redis, self._refresh_catalog, self.subscriptions.updated)
        self.audit = AuditLog(settings.audit_log, settings.audit_max_bytes, settings.audit_backups)
        self.sessions = SessionRegistry(self.settings.session_ttl)
        self.rate_limits = RateLimits(settings.rate_limit, settings.rate_limit_storage)
        self.reloads: deque[ReloadEvent] = deque(maxlen=50)
        self.started_at = time.time()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        SESSION_LIMIT.set(SESSION_CAP)
        CONFIG_LAST_RELOAD_OK.set(1)
        _log_warnings(config)

    @property
    def config(self) -> GatewayConfig:
        return self.snapshot.config

    @property
    def engine(self) -> PolicyEngine:
        return self.snapshot.engine

    def pinned(self, op: Operation) -> Snapshot:
        """The configuration `op` runs under: the one current when it first asked, kept for
        the rest of the operation however many reloads happen meanwhile."""
        if op.snapshot is None:
            op.snapshot = self.snapshot
        return op.snapshot

    def catalog(self, agent_id: str, snapshot: Snapshot | None = None) -> Catalog:
        """`agent_id`'s aggregate view of the downstream servers, under `snapshot` (an
        operation's) or else as configured now."""
        snapshot = snapshot or self.snapshot
        return Catalog(snapshot.config.servers, snapshot.engine, self.pool, agent_id)

    def instance(self, server: str, op: Operation, relay: Relay | None = None) -> Downstream:
        """The downstream session `op`'s calls to `server` use: its agent's or its client
        session's under the server's isolation, started on first use (`DownstreamPool.instance`,
        which raises ServerUnavailable for an unknown server or one at its instance limit)."""
        return self.pool.instance(server, Owner(op.agent_id, op.session_id, relay))

    def listing(self, server: str, op: Operation) -> Downstream:
        """Where `op`'s agent reads `server`'s catalog: its own session once that is up, else
        the shared one (the last list seen)."""
        downstream = self.pool.listing(server, Owner(op.agent_id, op.session_id))
        if downstream is None:
            raise ServerUnavailable(server, "not configured on this gateway")
        return downstream

    def session_alive(self, key: str) -> bool:
        """Whether a client connection named by `notifications.session_key` (or a listen
        stream) is still open (a local one is, until sending to it fails)."""
        return key.startswith(LOCAL_PREFIX) or key in self.listens or self.sessions.get(key) is not None

    def may_use(self, agent_id: str, server: str) -> bool:
        try:
            return self.engine.decide(agent_id, server).allowed
        except InvalidAgentId:  # an agent a reload removed
            return False

    async def _unsubscribe(self, server: str, uri: str, owner: str) -> None:
        downstream = next((d for d in self.pool.instances(server) if d.owner == owner), None)
        if downstream is None:  # closed (reaped, reloaded) with its subscriptions
            return
        try:
            await downstream.unsubscribe(uri, self.settings.default_timeout_ms)
        except GatewayError as exc:
            log.info("downstream unsubscribe failed", extra={"server": server, "error": str(exc)})

    def _catalog_changed(self, server: str, kind: Kind) -> None:
        """A downstream's catalog changed here: check this process's listeners, and tell the
        other replicas (`sessions/bus.py`)."""
        self.list_changed.changed()
        self.bus.catalog_changed(server, kind)

    async def _resource_updated(self, server: str, uri: str, owner: str) -> None:
        self.bus.resource_updated(server, uri, owner)
        await self.subscriptions.updated(server, uri, owner)

    def _refresh_catalog(self, server: str, kind: Kind) -> None:
        """Another replica saw `server`'s `kind` change: re-read this process's copies."""
        for downstream in self.pool.instances(server):
            downstream.schedule_refresh(kind)

    def view_fingerprint(self, agent_id: str, kind: Kind) -> str:
        """What `agent_id` is shown of `kind`, as a digest: the view's name in the discovery
        view (its list is the gateway's own), the catalog's digest in the aggregate view."""
        if self.config.rules.view_of(agent_id) != "aggregate":
            return f"discovery:{kind}"
        return self.catalog(agent_id).fingerprint(kind)

    @property
    def config_paths(self) -> tuple[Path, Path]:
        return self.config.mcp_path, self.config.rules_path

    async def start(self) -> None:
        warning = self.claims_warning
        if warning is not None:
            log.warning("agents are not authenticated", extra={"warning": warning})
        await self.rate_limits.start()
        await self.bus.start()
        await self.pool.apply(self.config.servers)
        self.spawn(self.pins.watch(self._pins_changed))
        self.reloads.append(ReloadEvent(time.time(), "startup", True, None, self.config.warnings))

    @property
    def claims_warning(self) -> str | None:
        return claims_warning(self.settings, self.config.rules)

    @property
    def ready(self) -> bool:
        return self.pool.all_tried

    async def reload(self, source: str) -> bool:
        """Validate both files; swap them in only if they are good, else keep the last good."""
        async with self._reload_lock:
            mcp_path, rules_path = self.config_paths
            try:
                new = await asyncio.to_thread(config_module.load, mcp_path, rules_path)
                problem = identity_problem(self.settings, new.rules)
                if problem is not None:
                    raise ConfigError(rules_path, "", problem)
                snapshot = _build_snapshot(new, self.settings, rules_path)
            except ConfigError as exc:
                CONFIG_RELOADS.labels("failure").inc()
                CONFIG_LAST_RELOAD_OK.set(0)
                self.reloads.append(ReloadEvent(time.time(), source, False, str(exc)))
                log.error("configuration reload rejected", extra={"source": source, "error": str(exc)})
                return False
            try:
                await self.pool.apply(new.servers)
            except Exception:
                CONFIG_RELOADS.labels("failure").inc()
                CONFIG_LAST_RELOAD_OK.set(0)
                self.reloads.append(ReloadEvent(time.time(), source, False, "applying the servers failed"))
                log.exception("configuration reload failed to apply; keeping the last good one")
                await self.pool.apply(self.config.servers)
                return False
            self.snapshot = snapshot
            self.pool.revise_credentials()
            self.list_changed.changed()
            CONFIG_RELOADS.labels("success").inc()
            CONFIG_LAST_RELOAD_OK.set(1)
            self.reloads.append(ReloadEvent(time.time(), source, True, None, new.warnings))
            log.info("configuration reloaded", extra={"source": source, "servers": len(new.servers)})
            _log_warnings(new)
            return True

    def _pins_changed(self) -> None:
        """An approval in the pins file: list the pinned servers' tools again, to show it."""
        for server in self.pool.every():
            if server.config.pin_tools:
                server.schedule_refresh("tools")

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background, referenced until done and cancelled by `close`."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.listens.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.list_changed.close()
        await self.bus.close()
        await self.pool.close()
        await self.rate_limits.close()
        self.audit.close()


def _build_snapshot(config: GatewayConfig, settings: Settings, rules_path: Path) -> Snapshot:
    """The snapshot of a new configuration; anything that fails compiling it (a verifier that
    refuses what validation let through) is a rejected reload, never a half-applied one."""
    try:
        return Snapshot.build(config, settings)
    except Exception as exc:
        raise ConfigError(rules_path, "", f"cannot be compiled: {type(exc).__name__}: {exc}") from None


def _log_warnings(config: GatewayConfig) -> None:
    for warning in config.warnings:
        log.warning("configuration warning", extra={"warning": warning})
