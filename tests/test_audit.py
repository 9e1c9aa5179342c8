"""The audit log: complete JSON lines, size rotation, and write failures that are never silent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agent_mcp_gateway.audit import AuditLog, AuditRecord
from agent_mcp_gateway.settings import load_settings
from agent_mcp_gateway.metrics import REGISTRY

SPEC_FIELDS = {
    "timestamp",
    "agent_id",
    "operation",
    "server",
    "tool",
    "decision",
    "rule",
    "error_code",
    "latency_ms",
    "session_id",
    "request_id",
}


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
    assert set(first) == SPEC_FIELDS
    assert first == {"timestamp": first["timestamp"], **asdict(record())}
    assert first["timestamp"].endswith("Z")
    assert datetime.fromisoformat(first["timestamp"]).utcoffset().total_seconds() == 0
    assert set(second) == SPEC_FIELDS
    assert (second["agent_id"], second["tool"], second["rule"]) == (None, None, None)
    assert second["server"] == "café"
    assert "café" in (tmp_path / "audit.jsonl").read_text(encoding="utf-8")


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

    files = sorted(tmp_path.iterdir())
    assert files == [path, *(tmp_path / f"audit.jsonl.{n}" for n in (1, 2, 3))]
    kept: list[str] = []
    for file in files:
        assert 0 < file.stat().st_size <= 1000
        kept += [line["request_id"] for line in lines(file)]
    # The newest lines survive, in order from the oldest backup to the live file.
    newest_first = [line["request_id"] for file in [path, *files[1:]] for line in reversed(lines(file))]
    assert newest_first == [f"r-{index}" for index in range(59, 59 - len(kept), -1)]


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
