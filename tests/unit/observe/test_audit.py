"""The audit log: complete JSON lines, size rotation, a hash chain that `audit verify` checks,
and write failures that are never silent. That a gateway writes no tool arguments is in
tests/inprocess/test_audit.py; the `audit verify` command in tests/process/test_audit_verify.py."""

from __future__ import annotations

import itertools
import json
import logging
import stat
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from agent_mcp_gateway.observe.audit import (
    FIELD_LIMIT,
    GENESIS,
    AuditLog,
    AuditRecord,
    ChainCheck,
    session_ref,
    verify,
)
from agent_mcp_gateway.observe.metrics import REGISTRY
from agent_mcp_gateway.settings import load_settings

from conftest import AUDIT_SPEC_FIELDS, wait_until

# How the line was authenticated, and the chain.
EXTRA_FIELDS = {"auth", "credential", "claimed_agent_id", "trace_id", "prev_hash"}


def record(**changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "agent_id": "backend",
        "operation": "execute_tool",
        "server": "db",
        "tool": "drop_table",
        "decision": "DENY",
        "rule": "agents.backend.deny.tools.db[0]",
        "error_code": "DENIED_BY_POLICY",
        "latency_ms": 0.42,
        "session_id": "4f2c",
        "request_id": "r-1",
    }
    return AuditRecord(**{**fields, **changes})


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def digest(line: bytes) -> str:
    return sha256(line).hexdigest()


def write_lines(path: Path, count: int, **options: Any) -> None:
    audit = AuditLog(path, **options)
    for index in range(count):
        audit.write(record(request_id=f"r-{index}"))
    audit.close()


def failures() -> float:
    return REGISTRY.get_sample_value("gateway_audit_write_failures_total") or 0.0


@pytest.fixture
def gateway_errors() -> Iterator[list[logging.LogRecord]]:
    """Records on the gateway's own logger, wherever its handlers point."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("agent_mcp_gateway")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def test_line_has_every_spec_field(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write(record())
    audit.write(record(agent_id=None, tool=None, decision="ALLOW", rule=None, error_code=None, server="café"))
    audit.close()

    first, second = lines(tmp_path / "audit.jsonl")
    assert set(first) == AUDIT_SPEC_FIELDS | EXTRA_FIELDS
    expected = {**asdict(record()), "session_id": session_ref("4f2c")}
    assert first == {"timestamp": first["timestamp"], **expected, "prev_hash": GENESIS}
    assert first["timestamp"].endswith("Z")
    assert datetime.fromisoformat(first["timestamp"]).utcoffset().total_seconds() == 0
    assert set(second) == AUDIT_SPEC_FIELDS | EXTRA_FIELDS
    assert (second["agent_id"], second["tool"], second["rule"]) == (None, None, None)
    assert second["server"] == "café"
    assert "café" in (tmp_path / "audit.jsonl").read_text(encoding="utf-8")


def test_session_ids_are_recorded_as_references_never_as_ids(tmp_path: Path) -> None:
    session_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write(record(session_id=session_id))
    audit.write(record(session_id=None))
    audit.close()

    first, second = lines(tmp_path / "audit.jsonl")
    assert session_id not in (tmp_path / "audit.jsonl").read_text()
    assert first["session_id"] == session_ref(session_id) != session_ref("another session")
    assert second["session_id"] is None


def test_values_are_bounded_so_refused_headers_cannot_fill_the_file(tmp_path: Path) -> None:
    huge = "x" * 190_000
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write(record(agent_id=None, claimed_agent_id=huge, session_id=huge, request_id=huge, tool=huge))
    audit.close()

    assert (tmp_path / "audit.jsonl").stat().st_size < 2 * 1024
    (line,) = lines(tmp_path / "audit.jsonl")
    assert line["claimed_agent_id"] == "x" * FIELD_LIMIT + f"...[{190_000 - FIELD_LIMIT} more]"


def test_audit_files_are_readable_by_the_gateway_user_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)  # an older file, written before the gateway kept them private
    audit = AuditLog(path, max_bytes=1000, backups=2)
    for index in range(30):
        audit.write(record(request_id=f"r-{index}"))
    audit.close()

    files = sorted(tmp_path.iterdir())
    assert [file.name for file in files] == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
        "audit.jsonl.checkpoints",
    ]
    assert {stat.S_IMODE(file.stat().st_mode) for file in files} == {0o600}


def test_path_from_settings_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "audit.jsonl"
    audit = AuditLog(load_settings({"GATEWAY_AUDIT_LOG": str(path)}).audit_log)
    audit.write(record())
    audit.close()
    audit.close()  # closing twice is harmless
    assert audit.path == path
    assert len(lines(path)) == 1


def test_rotation_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=1000, backups=3)
    for index in range(60):
        audit.write(record(request_id=f"r-{index}"))
    audit.close()

    files = sorted(file for file in tmp_path.iterdir() if not file.name.endswith(".checkpoints"))
    assert files == [path, *(tmp_path / f"audit.jsonl.{n}" for n in (1, 2, 3))]
    kept: list[str] = []
    for file in files:
        assert 0 < file.stat().st_size <= 1000
        kept += [line["request_id"] for line in lines(file)]
    # The newest lines survive, in order from the oldest backup to the live file.
    newest_first = [line["request_id"] for file in [path, *files[1:]] for line in reversed(lines(file))]
    assert newest_first == [f"r-{index}" for index in range(59, 59 - len(kept), -1)]

    # The chain runs across the rotations; the oldest kept line follows one rotated away.
    oldest_first = [*reversed(files[1:]), path]
    check = verify(oldest_first)
    assert (check.problem, check.lines) == (None, len(kept))
    for older, newer in itertools.pairwise(oldest_first):
        last = older.read_bytes().splitlines()[-1]
        assert lines(newer)[0]["prev_hash"] == digest(last)
    assert check.first_prev_hash == lines(oldest_first[0])[0]["prev_hash"] != GENESIS
    assert check.last_hash == digest(path.read_bytes().splitlines()[-1])


@pytest.mark.parametrize("broken", ["directory in place of the file", "parent is a file"])
def test_write_failure_is_counted_and_logged(
    tmp_path: Path, broken: str, gateway_errors: list[logging.LogRecord]
) -> None:
    if broken == "parent is a file":
        (tmp_path / "not-a-dir").write_text("")
        path = tmp_path / "not-a-dir" / "audit.jsonl"
    else:
        path = tmp_path / "audit.jsonl"
        path.mkdir()
    before = failures()

    audit = AuditLog(path)
    audit.write(record())
    audit.write(record())
    audit.close()

    assert failures() == before + 2
    messages = [entry.getMessage() for entry in gateway_errors]
    assert messages.count("audit line could not be written") == 2
    if broken == "parent is a file":
        assert "audit log directory could not be created" in messages
    assert all(entry.audit_path == str(path) for entry in gateway_errors)  # type: ignore[attr-defined]

    # The process carries on: a working audit log afterwards writes normally.
    healthy = AuditLog(tmp_path / "healthy.jsonl")
    healthy.write(record())
    healthy.close()
    assert len(lines(tmp_path / "healthy.jsonl")) == 1
    assert failures() == before + 2


def test_each_line_carries_the_hash_of_the_line_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_lines(path, 5)

    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    raw_lines = raw.split(b"\n")[:-1]
    assert [json.loads(line)["prev_hash"] for line in raw_lines] == [
        GENESIS,
        *(digest(line) for line in raw_lines[:-1]),
    ]
    assert verify([path]) == ChainCheck(5, None, GENESIS, digest(raw_lines[-1]))


def test_a_restarted_gateway_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_lines(path, 2)
    write_lines(path, 2)
    check = verify([path])
    assert (check.problem, check.lines, check.first_prev_hash) == (None, 4, GENESIS)

    # A line cut short by a crash is ended, so the next line does not run into it; the chain
    # covers its bytes, and `verify` reports it.
    with path.open("ab") as file:
        file.write(b'{"timestamp": "2026-')
    write_lines(path, 1)
    raw_lines = path.read_bytes().split(b"\n")[:-1]
    assert raw_lines[4] == b'{"timestamp": "2026-'
    assert json.loads(raw_lines[5])["prev_hash"] == digest(raw_lines[4])
    check = verify([path])
    assert check.lines == 4
    assert check.problem is not None and check.problem.startswith(f"{path}:5: not JSON")


def tampered(path: Path, change: str) -> None:
    raw = path.read_bytes().split(b"\n")[:-1]
    if change == "edit":
        raw[1] = raw[1].replace(b'"DENY"', b'"ALLOW"')
    elif change == "edit and rehash the next line only":
        raw[1] = raw[1].replace(b'"DENY"', b'"ALLOW"')
        raw[2] = raw[2].replace(json.loads(raw[2])["prev_hash"].encode(), digest(raw[1]).encode())
    elif change == "remove":
        del raw[1]
    elif change == "insert":
        raw.insert(2, raw[1])
    elif change == "reorder":
        raw[1], raw[2] = raw[2], raw[1]
    elif change == "blank line":
        raw.insert(2, b"")
    elif change == "not an object":
        raw[2] = b"[1, 2]"
    elif change == "no prev_hash":
        raw[2] = json.dumps({**json.loads(raw[2]), "prev_hash": None}).encode()
    elif change == "not UTF-8":
        raw[2] = raw[2].replace(b"backend", b"back\xffend")
    elif change == "restart at genesis":
        raw[2] = raw[2].replace(json.loads(raw[2])["prev_hash"].encode(), GENESIS.encode())
    text = b"".join(line + b"\n" for line in raw)
    path.write_bytes(text[:-20] if change == "cut mid-line" else text)


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        ("edit", 3, "prev_hash is not the hash of the line before"),
        ("edit and rehash the next line only", 4, "prev_hash is not the hash of the line before"),
        ("remove", 2, "prev_hash is not the hash of the line before"),
        ("insert", 3, "prev_hash is not the hash of the line before"),
        ("reorder", 2, "prev_hash is not the hash of the line before"),
        ("blank line", 3, "not JSON"),
        ("not an object", 3, "not a JSON object"),
        ("no prev_hash", 3, "no prev_hash"),
        ("not UTF-8", 3, "not UTF-8"),
        ("restart at genesis", 3, "the chain starts again here"),
        ("cut mid-line", 5, "unfinished line"),
    ],
)
def test_verify_reports_the_first_broken_line(tmp_path: Path, change: str, line: int, reason: str) -> None:
    path = tmp_path / "audit.jsonl"
    write_lines(path, 5)
    tampered(path, change)
    check = verify([path])
    assert check.problem is not None and check.problem.startswith(f"{path}:{line}: {reason}")
    assert check.lines == line - 1


def test_cutting_lines_off_the_end_shows_only_in_the_last_hash(tmp_path: Path) -> None:
    """Without a key, the chain cannot show lines removed from the end: comparing the last hash
    with a copy kept elsewhere does."""
    path = tmp_path / "audit.jsonl"
    write_lines(path, 5)
    before = verify([path])
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().split(b"\n")[:-2]))
    after = verify([path])
    assert (after.problem, after.lines) == (None, 4)
    assert after.last_hash != before.last_hash


def test_line_separators_in_values_stay_inside_one_line(tmp_path: Path) -> None:
    # What str.splitlines and other readers take as line ends, and a lone surrogate, which UTF-8
    # cannot encode: a caller can put any of them in a server or tool name.
    odd = ["\u2028", "\u2029", "\x85", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\ud800"]
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    for index, text in enumerate(odd):
        audit.write(record(server=f"a{text}b", tool=text, request_id=f"r-{index}"))
    audit.close()

    text = path.read_text(encoding="utf-8")
    assert not {"\u2028", "\u2029", "\x85"} & set(text)
    assert "\\u2028" in text
    assert len(text.splitlines()) == len(odd)  # one record per line
    written = [json.loads(line) for line in text.splitlines()]
    assert [(line["server"], line["tool"]) for line in written] == [(f"a{t}b", t) for t in odd]
    assert verify([path]).problem is None


def test_a_line_that_could_not_be_written_leaves_a_gap_in_the_chain(
    tmp_path: Path, gateway_errors: list[logging.LogRecord]
) -> None:
    (tmp_path / "logs").write_text("")  # a file where the directory should be
    path = tmp_path / "logs" / "audit.jsonl"
    before = failures()
    audit = AuditLog(path)
    audit.write(record(request_id="lost"))
    assert wait_until(lambda: failures() == before + 1, 5)
    (tmp_path / "logs").unlink()
    (tmp_path / "logs").mkdir()
    audit.write(record(request_id="kept"))
    audit.close()

    (kept,) = lines(path)
    assert kept["request_id"] == "kept"
    # The file should start at genesis: it starts after a line that is not there.
    assert kept["prev_hash"] != GENESIS
    assert verify([path]).first_prev_hash == kept["prev_hash"]
    messages = [entry.getMessage() for entry in gateway_errors]
    assert messages.count("audit line could not be written") == 1
