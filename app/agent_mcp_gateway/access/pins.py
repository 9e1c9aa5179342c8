"""Pinned tool definitions: protection against a downstream silently rewriting its tools.

For a server with `pin_tools: true` the gateway records the SHA-256 of each tool's definition
at first sight; with `pin_tools: "strict"` only at the server's first sight, and a tool that
appears later is held like a changed one until approved (a server cannot publish a poisoned
tool under a new name). A tool whose definition later differs from its pin is quarantined: left out of
the tool list every view is built from (`PinStore.review`, the one filter the downstream tool
cache goes through) and refused when called, until an operator accepts the new definition with
`agent-mcp-gateway tools approve SERVER TOOL`. Quarantining records the candidate's hash (and
its definition, to review) in the pins file; approving moves the candidate to the pin, and the
running gateway, watching the file, lists the server's tools again and shows the tool.

The pins file is small JSON, shared by every gateway process and the CLI: each read-modify-write
holds an exclusive lock and replaces the file atomically. A file that cannot be read or parsed
is never overwritten and never trusted: the gateway logs it, keeps the pins it last read
successfully, and hides every tool of a pinned server that does not match one of those, until
the file is fixed or removed (removing it pins every tool again at first sight).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Annotated, Any, Literal

import mcp_types as mt
from platformdirs import user_state_dir
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from agent_mcp_gateway.errors import DeniedByPolicy
from agent_mcp_gateway.observe.metrics import QUARANTINED_CALLS, TOOLS_QUARANTINED
from agent_mcp_gateway.settings import Settings

log = logging.getLogger("agent_mcp_gateway.pins")

PINS_NAME = "tool-pins.json"
# What a client is shown of a tool, so what a poisoned downstream would change; `_meta` too,
# where extensions point clients at more content (e.g. `ui.resourceUri`).
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations", "_meta")
MIN_PREFIX = 12  # hex digits an approval's --hash must give, at least
SHORT = 12  # hex digits of a hash shown to people
POLL_SECONDS = 0.5  # how often the running gateway checks the pins file for changes by others

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Stamp = tuple[int, int, int] | None
Pinning = bool | Literal["strict"]


def pins_path(settings: Settings) -> Path:
    """Next to the audit log when `GATEWAY_AUDIT_LOG` places it; otherwise the user's state
    directory, not the cache directory the default audit log lives in: pins are state, and a
    cleaned cache would silently trust every tool again."""
    if settings.audit_log is not None:
        return settings.audit_log.parent / PINS_NAME
    return Path(user_state_dir("agent-mcp-gateway")) / PINS_NAME


def definition(tool: mt.Tool) -> dict[str, Any]:
    dumped = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: dumped[key] for key in DEFINITION_FIELDS if key in dumped}


def definition_hash(tool: mt.Tool) -> str:
    """The hash of the tool's canonical definition: JSON with sorted keys and no whitespace."""
    canonical = json.dumps(definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + sha256(canonical.encode()).hexdigest()


def short(digest: str | None) -> str:
    return digest.removeprefix("sha256:")[:SHORT] if digest else "-"


def rule_for(server: str, tool: str) -> str:
    return f"pin_tools:{server}/{tool}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Pin(BaseModel):
    """One tool's pin and, while it is quarantined, the definition it was seen with instead. A
    tool new to a strict server has no pin until approved."""

    model_config = ConfigDict(extra="forbid")

    pin: Digest | None = None
    pinned_at: str | None = None
    candidate: Digest | None = None
    candidate_seen_at: str | None = None
    candidate_definition: dict[str, Any] | None = None


class PinsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    servers: dict[str, dict[str, Pin]] = {}


class PinsFileError(Exception):
    """The pins file exists but cannot be read, parsed or written."""


class ApprovalError(Exception):
    """There is nothing to approve: no such pin, or the tool is not quarantined."""


class ToolQuarantined(DeniedByPolicy):
    """A call to a tool whose definition no longer matches its pin."""

    def __init__(self, agent_id: str, operation: str, server: str, tool: str) -> None:
        rule = rule_for(server, tool)
        super().__init__(agent_id, operation, server, tool, rule)
        self.message = (
            f"Tool '{tool}' on server '{server}' is quarantined: its definition changed since it "
            f"was pinned (rule {rule}); an operator must review and approve it."
        )
        self.args = (self.message,)


class PinStore:
    """The pins file, and which tools of each pinned server are quarantined in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._trusted = PinsFile()  # the pins last read from a good file
        # Quarantined tool names by (server, downstream session): sessions of one server may list
        # different definitions (one per agent, `downstream.pool`), so each hides its own.
        self._quarantined: dict[tuple[str, str], set[str]] = {}
        self._written: Stamp = None  # this process's last write, which the watcher ignores
        self._reported: str | None = None  # the last file problem logged, to log each once

    # --- the gateway's side ----------------------------------------------------------------

    def review(
        self, server: str, tools: Sequence[mt.Tool], pinned: Pinning, session: str = ""
    ) -> list[mt.Tool]:
        """The tools a client may see: all of them for an unpinned server; for a pinned one those
        whose definition matches its pin, pinning new ones (holding them, when strict and the
        server was seen before) and quarantining changed ones."""
        if not pinned:
            self._set_quarantined(server, session, set())
            return list(tools)
        digests = {tool.name: definition_hash(tool) for tool in tools}
        try:
            with self._locked():
                state = self._read()
                pins = state.servers.setdefault(server, {})
                if self._record(server, pins, tools, digests, strict=pinned == "strict"):
                    self._write(state)
            self._trusted = state
            self._reported = None
        except PinsFileError as exc:
            if str(exc) != self._reported:
                self._reported = str(exc)
                log.error(
                    "tool pins file unusable; tools of pinned servers that match no trusted pin "
                    "are hidden until it is fixed or removed",
                    extra={"pins_path": str(self.path), "error": str(exc)},
                )
            pins = self._trusted.servers.get(server, {})
        hidden = {name for name, digest in digests.items() if name not in pins or pins[name].pin != digest}
        for name in self._quarantined.get((server, session), set()) & (digests.keys() - hidden):
            log.info("tool released from quarantine", extra={"server": server, "tool": name})
        self._set_quarantined(server, session, hidden)
        return [tool for tool in tools if tool.name not in hidden]

    def quarantined(self, server: str, tool: str, session: str = "") -> bool:
        """Whether `tool` is quarantined as downstream session `session` of `server` lists it."""
        return tool in self._quarantined.get((server, session), ())

    def quarantined_tools(self, server: str, session: str = "") -> frozenset[str]:
        return frozenset(self._quarantined.get((server, session), ()))

    def refuse(self, agent_id: str, operation: str, server: str, tool: str, session: str = "") -> None:
        """Raise ToolQuarantined (naming who asked, for the audit) for a quarantined tool;
        return for any other."""
        if not self.quarantined(server, tool, session):
            return
        QUARANTINED_CALLS.labels(server).inc()
        raise ToolQuarantined(agent_id, operation, server, tool)

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` whenever another process (the CLI, another gateway) changes the file.

        Polled (one `stat` per `POLL_SECONDS`) rather than watched: the file sits beside the
        audit log, so a watch on its folder woke on every batch of audit lines (measured: 3.4 %
        of the worker's event-loop CPU under sequential calls). A missing file or folder is one
        more state to notice: the first pin creates them."""
        seen = await asyncio.to_thread(_stamp, self.path)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = await asyncio.to_thread(_stamp, self.path)
            if now != seen and (now is None or now != self._written):
                on_change()
            seen = now

    def _record(
        self,
        server: str,
        pins: dict[str, Pin],
        tools: Sequence[mt.Tool],
        digests: dict[str, str],
        strict: bool = False,
    ) -> bool:
        """Pin new tools (or, strict on a server seen before, hold them) and note changed ones
        as candidates; whether `pins` changed."""
        changed = False
        held = strict and bool(pins)
        new = [tool.name for tool in tools if tool.name not in pins]
        for name in new:
            pins[name] = Pin(pin=None) if held else Pin(pin=digests[name], pinned_at=_now())
        if new:
            message = "new tools held until approved" if held else "tools pinned at first sight"
            (log.warning if held else log.info)(message, extra={"server": server, "tools": new})
            changed = True
        for tool in tools:
            digest, pin = digests[tool.name], pins[tool.name]
            where = {"server": server, "tool": tool.name}
            if pin.pin == digest:
                if pin.candidate is not None:
                    log.info("tool matches its pin again", extra={**where, "pin": short(digest)})
                    pins[tool.name] = Pin(pin=digest, pinned_at=pin.pinned_at)
                    changed = True
            elif pin.candidate != digest:
                log.warning(
                    "new tool held until approved"
                    if pin.pin is None
                    else "tool definition changed since it was pinned; quarantined until approved",
                    extra={
                        **where,
                        "pin": short(pin.pin),
                        "candidate": short(digest),
                        "rule": rule_for(server, tool.name),
                    },
                )
                pins[tool.name] = pin.model_copy(
                    update={
                        "candidate": digest,
                        "candidate_seen_at": _now(),
                        "candidate_definition": definition(tool),
                    }
                )
                changed = True
        return changed

    def _set_quarantined(self, server: str, session: str, tools: set[str]) -> None:
        self._quarantined[(server, session)] = tools
        hidden = set().union(*(names for (name, _), names in self._quarantined.items() if name == server))
        TOOLS_QUARANTINED.labels(server).set(len(hidden))

    # --- the operator's side ---------------------------------------------------------------

    def load(self) -> PinsFile:
        """The pins file as it is now (empty when it does not exist); PinsFileError if unusable."""
        return self._read()

    def approve(self, server: str, tool: str, expected: str | None = None) -> Pin:
        """Accept a quarantined tool's candidate definition as its pin; the new pin.

        `expected`, a prefix of the candidate's hash, guards against approving a definition
        that changed again after the operator looked at it."""
        with self._locked():
            state = self._read()
            pin = state.servers.get(server, {}).get(tool)
            if pin is None:
                raise ApprovalError(f"no pin for tool '{tool}' on server '{server}' in {self.path}")
            if pin.candidate is None:
                raise ApprovalError(f"tool '{tool}' on server '{server}' is not quarantined")
            if expected is not None and not pin.candidate.removeprefix("sha256:").startswith(
                _prefix(expected)
            ):
                raise ApprovalError(
                    f"tool '{tool}' on server '{server}' now has candidate {short(pin.candidate)}, "
                    f"not {expected}; check it again with tools status"
                )
            approved = Pin(pin=pin.candidate, pinned_at=_now())
            state.servers[server][tool] = approved
            self._write(state)
        return approved

    # --- the file --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on a sidecar file (never removed: removing lock files races), so
        gateways and the CLI never interleave their read-modify-write cycles. fcntl is enough
        here: the gateway already relies on POSIX process groups."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PinsFileError(f"cannot lock: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)

    def _read(self) -> PinsFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return PinsFile()
        except (OSError, UnicodeDecodeError) as exc:
            raise PinsFileError(f"cannot be read ({type(exc).__name__})") from None
        try:
            return PinsFile.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise PinsFileError(f"{where}: {first['msg']}") from None

    def _write(self, state: PinsFile) -> None:
        """Replace the file atomically: a temporary file in the same folder, then a rename."""
        text = state.model_dump_json(indent=2, exclude_none=True) + "\n"
        try:
            handle, temporary = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise PinsFileError(f"cannot be written ({exc.strerror or exc})") from None
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise PinsFileError(f"cannot be written ({exc.strerror or exc})") from None
        self._written = _stamp(self.path)


def _prefix(expected: str) -> str:
    """The hex digits of an approval's expected hash: at least `MIN_PREFIX` of them, so an
    empty or short prefix cannot approve whatever the definition has become."""
    digits = expected.strip().removeprefix("sha256:")
    if not re.fullmatch(f"[0-9a-f]{{{MIN_PREFIX},64}}", digits):
        raise ApprovalError(
            f"--hash must be at least {MIN_PREFIX} hex digits of the candidate's hash "
            "(as tools status shows it, with or without sha256:)"
        )
    return digits


def _stamp(path: Path) -> Stamp:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)
