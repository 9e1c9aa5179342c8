"""The audit log: one JSON line per gateway operation, rotated by size.

Lines are handed to a background thread (the stdlib's QueueHandler/QueueListener), so a slow
disk never stalls a tool call. A line that cannot be written is counted and reported on the
gateway's own log; it is never dropped silently.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_dir
from pythonjsonlogger.json import JsonFormatter

from .metrics import AUDIT_WRITE_FAILURES

log = logging.getLogger("agent_mcp_gateway")

Decision = Literal["ALLOW", "DENY", "ERROR"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    agent_id: str | None
    operation: str
    server: str | None
    tool: str | None
    decision: Decision
    rule: str | None
    error_code: str | None
    latency_ms: float
    session_id: str | None
    request_id: str | None
    auth: str | None = None
    credential: str | None = None
    claimed_agent_id: str | None = None


def default_path() -> Path:
    return Path(user_cache_dir("agent-mcp-gateway")) / "audit.jsonl"


class _CountingFileHandler(logging.handlers.RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (stdlib name)
        AUDIT_WRITE_FAILURES.inc()
        error = sys.exc_info()[1]
        log.error(
            "audit line could not be written",
            extra={"audit_path": self.baseFilename, "error": type(error).__name__},
        )


class AuditLog:
    def __init__(self, path: Path | None = None, max_bytes: int = 10 * 2**20, backups: int = 5) -> None:
        self.path = path or default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Keep serving: every line that then fails to be written is counted and logged.
            log.error(
                "audit log directory could not be created",
                extra={"audit_path": str(self.path), "error": type(exc).__name__},
            )
        self._handler = handler = _CountingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        handler.setFormatter(
            JsonFormatter("{timestamp}", style="{", reserved_attrs=_RESERVED, json_ensure_ascii=False)
        )
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._logger = logging.Logger("agent_mcp_gateway.audit")
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()
        self._closed = False

    def write(self, record: AuditRecord) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._logger.info("", extra={"timestamp": now, **asdict(record)})

    def close(self) -> None:
        """Flush every queued line to disk and close the file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._listener.stop()
            self._handler.close()


# Every standard LogRecord attribute, plus `message`, is left out of the line: an audit line
# carries only the audit fields.
_RESERVED = [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "taskName"]
