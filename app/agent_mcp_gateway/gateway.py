"""The gateway's runtime state: the live configuration, its policy engine, the downstream pool,
the audit log and the session registry, with reload as validate-then-swap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_module
from .audit import AuditLog
from .config import ConfigError, GatewayConfig
from .downstream import DownstreamPool
from .metrics import CONFIG_LAST_RELOAD_OK, CONFIG_RELOADS, SESSION_LIMIT
from .policy import PolicyEngine
from .sessions import SessionRegistry

log = logging.getLogger("agent_mcp_gateway")

DEFAULT_TIMEOUT_MS = 60_000
SESSION_CAP = 10_000  # the SDK session manager's own limit


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A configuration and the engine compiled from it, swapped as one reference."""

    config: GatewayConfig
    engine: PolicyEngine


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    at: float
    source: str
    ok: bool
    error: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(slots=True)
class Settings:
    debug: bool = False
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS
    connect_timeout: float = 15.0
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    session_ttl: float = 3600.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            debug=env.get("GATEWAY_DEBUG", "").lower() in ("1", "true", "yes", "on"),
            default_timeout_ms=int(env.get("GATEWAY_DEFAULT_TIMEOUT_MS", DEFAULT_TIMEOUT_MS)),
            connect_timeout=float(env.get("GATEWAY_CONNECT_TIMEOUT", 15.0)),
            ping_interval=float(env.get("GATEWAY_PING_INTERVAL", 10.0)),
            ping_timeout=float(env.get("GATEWAY_PING_TIMEOUT", 10.0)),
            session_ttl=float(env.get("GATEWAY_SESSION_TTL", 3600.0)),
        )


class Gateway:
    def __init__(self, config: GatewayConfig, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.snapshot = Snapshot(config, PolicyEngine(config.rules))
        self.pool = DownstreamPool(
            self.settings.connect_timeout, self.settings.ping_interval, self.settings.ping_timeout
        )
        self.audit = AuditLog()
        self.sessions = SessionRegistry(self.settings.session_ttl)
        self.reloads: deque[ReloadEvent] = deque(maxlen=50)
        self.started_at = time.time()
        self._reload_lock = asyncio.Lock()
        SESSION_LIMIT.set(SESSION_CAP)
        CONFIG_LAST_RELOAD_OK.set(1)
        _log_warnings(config)

    @property
    def config(self) -> GatewayConfig:
        return self.snapshot.config

    @property
    def engine(self) -> PolicyEngine:
        return self.snapshot.engine

    @property
    def config_paths(self) -> tuple[Path, Path]:
        return self.config.mcp_path, self.config.rules_path

    async def start(self) -> None:
        await self.pool.apply(self.config.servers)
        self.reloads.append(ReloadEvent(time.time(), "startup", True, None, self.config.warnings))

    @property
    def ready(self) -> bool:
        return self.pool.all_tried

    async def reload(self, source: str) -> bool:
        """Validate both files; swap them in only if they are good, else keep the last good."""
        async with self._reload_lock:
            mcp_path, rules_path = self.config_paths
            try:
                new = await asyncio.to_thread(config_module.load, mcp_path, rules_path)
            except ConfigError as exc:
                CONFIG_RELOADS.labels("failure").inc()
                CONFIG_LAST_RELOAD_OK.set(0)
                self.reloads.append(ReloadEvent(time.time(), source, False, str(exc)))
                log.error("configuration reload rejected", extra={"source": source, "error": str(exc)})
                return False
            self.snapshot = Snapshot(new, PolicyEngine(new.rules))
            await self.pool.apply(new.servers)
            CONFIG_RELOADS.labels("success").inc()
            CONFIG_LAST_RELOAD_OK.set(1)
            self.reloads.append(ReloadEvent(time.time(), source, True, None, new.warnings))
            log.info("configuration reloaded", extra={"source": source, "servers": len(new.servers)})
            _log_warnings(new)
            return True

    async def close(self) -> None:
        await self.pool.close()
        self.audit.close()


def _log_warnings(config: GatewayConfig) -> None:
    for warning in config.warnings:
        log.warning("configuration warning", extra={"warning": warning})
