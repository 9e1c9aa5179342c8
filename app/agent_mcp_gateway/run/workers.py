"""Several Granian workers: which worker this process is, and what it keeps apart from the others.

Granian gives a worker no index its factory can read, and every worker inherits one environment.
Each worker claims a slot instead: the first of `workers` lock files beside the audit log that it
can lock. The kernel drops the lock when the process ends, so a worker Granian respawns takes
the slot it left. Worker 1 keeps the configured audit file; worker N writes `audit-N.jsonl`
beside it, because the audit log is one hash chain per file, written in order by one process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

from agent_mcp_gateway.observe.audit import default_path
from agent_mcp_gateway.settings import Settings

log = logging.getLogger("agent_mcp_gateway.http")

_held: list[int] = []  # the slot's lock descriptor, open for the life of the worker


def claim_slot(directory: Path, stem: str, workers: int) -> int:
    """The first slot (1..`workers`) whose lock file in `directory` this process can lock."""
    directory.mkdir(parents=True, exist_ok=True)
    for slot in range(1, workers + 1):
        fd = os.open(directory / f".{stem}.worker-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)
        return slot
    raise RuntimeError(f"all {workers} worker slots are taken")


def worker_audit_path(path: Path, slot: int) -> Path:
    """Worker `slot`'s audit file: the configured one for worker 1, `name-N.ext` for the others."""
    return path if slot == 1 else path.with_name(f"{path.stem}-{slot}{path.suffix}")


def worker_settings(settings: Settings) -> Settings:
    """`settings` as this worker applies them: with one worker unchanged, with several its own
    audit file (a lock file that cannot be taken leaves the worker on a file named by its pid)."""
    if settings.workers == 1:
        return settings
    path = settings.audit_log or default_path()
    try:
        slot = claim_slot(path.parent, path.name, settings.workers)
        audit = worker_audit_path(path, slot)
    except (OSError, RuntimeError) as exc:
        audit = path.with_name(f"{path.stem}-pid{os.getpid()}{path.suffix}")
        log.warning("no worker slot", extra={"error": str(exc), "audit_path": str(audit)})
    return settings.model_copy(update={"audit_log": audit})


def share_request_state_key(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """With several workers and no `GATEWAY_REQUEST_STATE_KEYS`, one random key for all of them
    (they inherit `environ`), so a 2026-07-28 retry's requestState opens on whichever worker it
    reaches, as it would in one process; each worker would otherwise seal under a key of its own."""
    if settings.workers > 1 and not settings.request_state_keys:
        environ["GATEWAY_REQUEST_STATE_KEYS"] = secrets.token_urlsafe(48)


def several_workers_warnings(settings: Settings) -> list[str]:
    """What an operator must know before serving with several workers, each in its own memory."""
    if settings.workers == 1:
        return []
    warnings = [
        "session-era clients (2025-06-18, 2025-11-25) must reach the worker that holds their "
        "session, and Granian hands each connection to any worker: their requests on another "
        "connection get 404; serve them with GATEWAY_WORKERS=1 (per replica, behind "
        "Mcp-Session-Id affinity). 2026-07-28 clients carry no session and are served by any worker",
        "each worker writes its own audit file (audit-N.jsonl beside the configured one) and "
        "answers /metrics with its own counters",
        "a 2026-07-28 call held for a handshake-era server's question lives in one worker: its retry "
        "on another gets CALL_NOT_HELD, and the client sends it again",
    ]
    if settings.rate_limit_storage == "memory":
        warnings.append(
            f"rate limits are counted in each worker's memory: an agent gets up to {settings.workers} "
            "times its limit; set GATEWAY_RATE_LIMIT_STORAGE to a Redis URL to count them once"
        )
    return warnings
