"""Process logging: JSON lines on stderr (text for humans), each carrying the request id.

stdout is never written to: over stdio it is the MCP protocol channel.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import warnings
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    """32 random hex digits (a third of uuid4().hex's cost: no UUID object)."""
    return secrets.token_hex(16)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _TextFormatter(logging.Formatter):
    """One line per record for humans, with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and value is not None
        )
        return f"{line} {extras}" if extras else line


def _drop_expected_failures(record: logging.LogRecord) -> bool:
    """fastmcp logs every tool exception with a traceback; a gateway error is an answer, not a
    crash, and is already in the audit log."""
    from agent_mcp_gateway.errors import GatewayError

    error = record.exc_info[1] if record.exc_info else None
    while error is not None and not isinstance(error, GatewayError):
        error = error.__cause__
    return error is None


def setup_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Route the gateway's, fastmcp's and Granian's records to one stderr handler."""
    os.environ.setdefault("FASTMCP_LOG_ENABLED", "false")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "text":
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{request_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    handler.addFilter(_RequestIdFilter())
    # The lines carry no caller, thread or process fields: the logging HOWTO's "Optimization"
    # switches spare every record the stack walk and the lookups that fill them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # fastmcp configures its own rich handler at import; send its records through ours.
    fastmcp_logger = logging.getLogger("fastmcp")
    fastmcp_logger.handlers[:] = []
    fastmcp_logger.propagate = True
    handler.addFilter(_drop_expected_failures)
    logging.captureWarnings(True)
    # Legacy-era clients still negotiate logging; forwarding downstream logs to them is right.
    warnings.filterwarnings("ignore", message="The logging capability is deprecated")
    # Downstream sessions are handshake-era on purpose, where resources/subscribe is current.
    warnings.filterwarnings("ignore", message="resources/(un)?subscribe is removed as of 2026-07-28")
    # watchfiles logs every batch of file changes it sees; with the log written beside the
    # configuration, each of its lines would be a change to log again.
    for noisy in (
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "mcp",
        "fastmcp",
        "sse_starlette",
        "watchfiles",
    ):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
