"""`agent-mcp-gateway audit verify`, run as an operator runs it, on rotated, tampered, empty,
binary and unreadable audit files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agent_mcp_gateway.observe.audit import AuditLog, session_ref

from conftest import STARTUP_SECONDS
from unit.observe.test_audit import digest, lines, record, tampered, write_lines


def run_verify(*files: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "agent_mcp_gateway", "audit", "verify", *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


def test_audit_verify_command(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_lines(path, 40, max_bytes=2500, backups=2)
    files = [path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path]
    count = sum(len(lines(file)) for file in files)

    result = run_verify(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    first_prev_hash = lines(files[0])[0]["prev_hash"]
    ok, start, last = result.stdout.splitlines()
    assert ok == f"OK: {count} lines"
    assert re.fullmatch(
        f"chain starts at: {first_prev_hash} \\(a file of \\d+ lines rotated away at \\S+Z\\)", start
    ), start
    assert last == f"last line hash:  {digest(path.read_bytes().splitlines()[-1])}"

    # Without the checkpoints, the start is not explained: lines may have been cut from it.
    path.with_name("audit.jsonl.checkpoints").unlink()
    unexplained = run_verify(*files)
    assert unexplained.returncode == 0
    assert "(an earlier file; no rotation checkpoint explains it)" in unexplained.stdout

    result = run_verify(files[1], files[0], path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"BROKEN: {files[0]}:1: prev_hash is not the hash of the last line of")

    tampered(files[1], "edit")
    result = run_verify(*files)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"BROKEN: {files[1]}:3: prev_hash is not the hash of the line before "
        "(a line was changed, removed or inserted)",
        f"intact lines before it: {len(lines(files[0])) + 2}",
    ]


def test_audit_verify_command_on_new_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_lines(path, 1)
    result = run_verify(path)
    assert (result.returncode, result.stdout.splitlines()[:2]) == (
        0,
        ["OK: 1 line", "chain starts at: genesis"],
    )

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = run_verify(empty)
    assert (result.returncode, result.stdout) == (0, "OK: 0 lines\n")

    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 4)
    result = run_verify(binary)
    assert result.returncode == 1 and result.stdout.startswith(f"BROKEN: {binary}:1: ")

    for unreadable in (tmp_path / "missing.jsonl", tmp_path):
        result = run_verify(path, unreadable)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"error: cannot read {unreadable}: ")


def test_audit_ref_names_a_sessions_lines(tmp_path: Path) -> None:
    session_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write(record(session_id=session_id))
    audit.close()
    found = subprocess.run(
        [sys.executable, "-m", "agent_mcp_gateway", "audit", "ref", session_id],
        capture_output=True,
        text=True,
        check=True,
        timeout=STARTUP_SECONDS,
    )
    (line,) = lines(tmp_path / "audit.jsonl")
    assert found.stdout.strip() == line["session_id"] == session_ref(session_id)
