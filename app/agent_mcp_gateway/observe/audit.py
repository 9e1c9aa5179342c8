"""The audit log: one JSON line per gateway operation, rotated by size, hash-chained.

Lines are handed to a background thread (the stdlib's QueueListener), so a slow disk never
stalls a tool call; the hand-off is one queue put of a prepared record, with none of the
logging module's per-record work (caller lookup, handler locks, a record copy) on the caller's
thread. A line that cannot be written is counted and reported on the gateway's own log; it is
never dropped silently.

Each line's `prev_hash` is the hex SHA-256 of the previous line's exact bytes (UTF-8, without
its newline); a file's first line has GENESIS, except that the first line after a rotation
chains to the last line of the rotated file, and a restarted gateway continues its file. So a
line changed, removed or inserted in `audit.jsonl.N ... audit.jsonl.1 audit.jsonl` breaks the
chain that `verify` checks. The chain is computed on the writer thread, in write order.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from agent_mcp_gateway.observe.metrics import AUDIT_REFUSALS_SUPPRESSED, AUDIT_WRITE_FAILURES
from agent_mcp_gateway.operation import Decision

log = logging.getLogger("agent_mcp_gateway")


GENESIS = "0" * 64
"""The `prev_hash` of the first line of a new audit file."""

# Characters that json.dumps(ensure_ascii=False) leaves raw but that split a line for some
# readers (str.splitlines, JavaScript, many log shippers), plus lone surrogates, which UTF-8
# cannot encode. Inside JSON they only occur in strings, where the \uXXXX escape is equivalent.
_UNSAFE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
FILE_MODE = 0o600  # session references and agent ids are for the operator only
FIELD_LIMIT = 256  # characters kept of any one value: a refused request's headers cannot fill the file
# Unauthenticated refusals go to a file of their own (`<audit>.refusals`, same rotation), so no
# number of them can rotate an authenticated agent's lines out of the decision log; and at most
# this many per second (with a burst) are written at all, the rest counted.
REFUSALS_SUFFIX = ".refusals"
REFUSAL_RATE = 20.0
REFUSAL_BURST = 200.0
SUPPRESSED_LOG_INTERVAL = 10.0  # seconds between warnings about suppressed refusal lines
# Beside each audit file, one JSON line per file that rotation deleted: the hash of its last
# line and how many lines it held, so `verify` can tell a chain start that rotation explains
# from one that lines were cut from.
CHECKPOINTS_SUFFIX = ".checkpoints"


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
    trace_id: str | None = None


# The line's fields, in order; copied by name because dataclasses.asdict (a deep copy) would
# double the writer thread's time per line.
_FIELDS = tuple(field.name for field in fields(AuditRecord))
_LOGGER = "agent_mcp_gateway.observe.audit"


def session_ref(session_id: str | None) -> str | None:
    """What the audit line records of a session id: enough to tell sessions apart and to find a
    known session's lines (`agent-mcp-gateway audit ref ID`), never the id, which is a bearer
    secret while the session lives."""
    if session_id is None:
        return None
    return "s-" + sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _bounded(value: object) -> object:
    if isinstance(value, str) and len(value) > FIELD_LIMIT:
        return f"{value[:FIELD_LIMIT]}...[{len(value) - FIELD_LIMIT} more]"
    return value


def default_path() -> Path:
    return Path(user_cache_dir("agent-mcp-gateway")) / "audit.jsonl"


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class _AuditFileHandler(logging.handlers.RotatingFileHandler):
    """Writes each queued record as its chained line, on the writer thread, in queue order.

    The chain advances before the write is tried, so a line that could not be written shows as
    a break in the chain as well as in the failure count.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self._prev_hash: str | None = None  # read at the first line: a log never written costs nothing

    def emit(self, record: logging.LogRecord) -> None:
        # The line becomes the record's message, which the default formatter writes as is; the
        # size check formats the record a second time, so the chain cannot live in a formatter.
        try:
            entry = vars(record)
            audit = entry["audit"]
            if self._prev_hash is None:
                self._prev_hash = _chain_head(Path(self.baseFilename))
            values = {
                "timestamp": entry["timestamp"],
                **{name: _bounded(getattr(audit, name)) for name in _FIELDS},
                "prev_hash": self._prev_hash,
            }
            values["session_id"] = session_ref(audit.session_id)
            record.msg = line = _UNSAFE.sub(_escape, json.dumps(values, ensure_ascii=False))
            self._prev_hash = sha256(line.encode()).hexdigest()
        except Exception:
            self.handleError(record)
        else:
            super().emit(record)

    def doRollover(self) -> None:  # noqa: N802 (stdlib name)
        """Rotate; first record a checkpoint of the oldest kept file, which rotation deletes."""
        if self.backupCount > 0:
            oldest = Path(f"{self.baseFilename}.{self.backupCount}")
            try:
                lines, last = _summary(oldest)
            except FileNotFoundError:
                lines = 0
            if lines:
                checkpoint = {"rotated_at": _timestamp(), "file_lines": lines, "last_hash": last}
                with open(
                    os.open(
                        self.baseFilename + CHECKPOINTS_SUFFIX,
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                        FILE_MODE,
                    ),
                    "a",
                    encoding="utf-8",
                ) as out:
                    out.write(json.dumps(checkpoint) + "\n")
        super().doRollover()

    def _open(self) -> Any:
        """The file, created (and kept) readable by the gateway's user only."""
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (stdlib name)
        AUDIT_WRITE_FAILURES.inc()
        error = sys.exc_info()[1]
        log.error(
            "audit line could not be written",
            extra={"audit_path": self.baseFilename, "error": type(error).__name__},
        )


def is_refusal(record: AuditRecord) -> bool:
    """An unauthenticated request refused at the edge: anyone can cause one."""
    return record.error_code == "UNAUTHENTICATED"


class _Split(logging.Handler):
    """Hands each line to the decision log or the refusal log, on the writer thread."""

    def __init__(self, decisions: _AuditFileHandler, refusals: _AuditFileHandler) -> None:
        super().__init__()
        self.decisions, self.refusals = decisions, refusals

    def handle(self, record: logging.LogRecord) -> bool:
        target = self.refusals if is_refusal(vars(record)["audit"]) else self.decisions
        return target.handle(record)

    def close(self) -> None:
        self.decisions.close()
        self.refusals.close()
        super().close()


class _Bucket:
    """A token bucket: `rate` per second, up to `burst` at once (event-loop thread only)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class AuditLog:
    def __init__(self, path: Path | None = None, max_bytes: int = 10 * 2**20, backups: int = 5) -> None:
        self.path = path or default_path()
        self.refusals_path = self.path.with_name(self.path.name + REFUSALS_SUFFIX)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Keep serving: every line that then fails to be written is counted and logged.
            log.error(
                "audit log directory could not be created",
                extra={"audit_path": str(self.path), "error": type(exc).__name__},
            )
        self._handler = _Split(
            _AuditFileHandler(self.path, max_bytes, backups),
            _AuditFileHandler(self.refusals_path, max_bytes, backups),
        )
        self._refusals = _Bucket(REFUSAL_RATE, REFUSAL_BURST)
        self._suppressed_logged = 0.0
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._handler)
        self._listener.start()
        self._closed = False

    def write(self, record: AuditRecord) -> None:
        """Queue the line; it is formatted, chained and written on the writer thread. A refusal
        over the refusal rate is counted instead of written."""
        if is_refusal(record) and not self._refusals.take():
            AUDIT_REFUSALS_SUPPRESSED.inc()
            if time.monotonic() - self._suppressed_logged > SUPPRESSED_LOG_INTERVAL:
                self._suppressed_logged = time.monotonic()
                log.warning(
                    "unauthenticated refusals over the audit rate are counted, not written",
                    extra={
                        "rate_per_second": REFUSAL_RATE,
                        "metric": "gateway_audit_refusals_suppressed_total",
                    },
                )
            return
        now = _timestamp()
        self._queue.put_nowait(logging.makeLogRecord({"name": _LOGGER, "timestamp": now, "audit": record}))

    def close(self) -> None:
        """Flush every queued line to disk and close the file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._listener.stop()
            self._handler.close()


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _summary(path: Path) -> tuple[int, str]:
    """How many lines a file holds and the hash of its last one."""
    lines, last = 0, GENESIS
    with path.open("rb") as file:
        for raw in file:
            lines += 1
            last = sha256(raw.rstrip(b"\n")).hexdigest()
    return lines, last


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A file rotation deleted: when, how many lines it held, and its last line's hash."""

    rotated_at: str
    file_lines: int
    last_hash: str


def checkpoints(path: Path) -> dict[str, Checkpoint]:
    """The checkpoints recorded beside audit file `path` (the live one), by last-line hash."""
    found: dict[str, Checkpoint] = {}
    try:
        text = Path(str(path) + CHECKPOINTS_SUFFIX).read_text(encoding="utf-8")
    except FileNotFoundError:
        return found
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            found[entry["last_hash"]] = Checkpoint(
                entry["rotated_at"], int(entry["file_lines"]), entry["last_hash"]
            )
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable checkpoint explains nothing
    return found


def _chain_head(path: Path) -> str:
    """The hash the next line chains to: that of the file's last line, so a restarted gateway
    continues its chain, or GENESIS for a new file. An unfinished last line (a crash mid-write)
    is ended with a newline first, so the next line does not run into it."""
    try:
        with path.open("rb") as file:
            position = file.seek(0, os.SEEK_END)
            tail = b""
            while position and b"\n" not in tail[:-1]:
                step = min(position, 1 << 16)
                position -= step
                file.seek(position)
                tail = file.read(step) + tail
        if not tail:
            return GENESIS
        if not tail.endswith(b"\n"):
            with path.open("ab") as file:
                file.write(b"\n")
            tail += b"\n"
        return sha256(tail[:-1].rpartition(b"\n")[2]).hexdigest()
    except FileNotFoundError:
        return GENESIS
    except OSError as exc:
        # Keep serving; the chain restarts at GENESIS, which `verify` reports as a break.
        log.error(
            "audit chain could not be continued",
            extra={"audit_path": str(path), "error": type(exc).__name__},
        )
        return GENESIS


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """What `verify` found: the lines checked, the first problem if any, and the chain's ends
    (the first line's prev_hash, the last line's hash) to compare with a copy kept elsewhere."""

    lines: int
    problem: str | None
    first_prev_hash: str | None
    last_hash: str | None


class _Broken(Exception):
    pass


_HEX_DIGEST = re.compile("[0-9a-f]{64}")


def verify(paths: Sequence[Path]) -> ChainCheck:
    """Check audit files given oldest first: every line one JSON object, every prev_hash the hash
    of the line before it, across files. Stops at the first problem; OSError if a file cannot be
    read. The first line's prev_hash is taken as given: older files may have been rotated away."""
    count = 0
    first: str | None = None
    last: str | None = None
    last_path: Path | None = None
    with ExitStack() as stack:
        files = [(path, stack.enter_context(path.open("rb"))) for path in paths]
        for path, file in files:
            before = (f"the last line of {last_path}", "are the files given oldest first?")
            for number, raw in enumerate(file, 1):
                try:
                    prev_hash = _prev_hash(raw, last, *before)
                except _Broken as exc:
                    return ChainCheck(count, f"{path}:{number}: {exc}", first, last)
                first = first or prev_hash
                last, last_path = sha256(raw[:-1]).hexdigest(), path
                before = ("the line before", "a line was changed, removed or inserted")
                count += 1
    return ChainCheck(count, None, first, last)


def _prev_hash(raw: bytes, expected: str | None, before: str, hint: str) -> str:
    """The line's prev_hash, once the line is known to be a JSON object that continues the chain."""
    if not raw.endswith(b"\n"):
        raise _Broken("unfinished line (no newline at its end)")
    try:
        value = json.loads(raw[:-1].decode())
    except UnicodeDecodeError as exc:
        raise _Broken("not UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise _Broken(f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise _Broken("not a JSON object")
    prev_hash = value.get("prev_hash")
    if not isinstance(prev_hash, str) or not _HEX_DIGEST.fullmatch(prev_hash):
        raise _Broken("no prev_hash (a SHA-256 hex digest)")
    if expected is not None and prev_hash != expected:
        if prev_hash == GENESIS:
            raise _Broken(f"the chain starts again here instead of following {before}")
        raise _Broken(f"prev_hash is not the hash of {before} ({hint})")
    return prev_hash
