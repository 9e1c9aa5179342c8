"""Several Granian workers: each claims its own slot, hence its own audit file, and the operator
is told at start-up what several workers do not share."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_mcp_gateway.run.workers import (
    claim_slot,
    several_workers_warnings,
    share_request_state_key,
    worker_audit_path,
    worker_settings,
)
from agent_mcp_gateway.settings import load_settings


def test_slots_are_claimed_once_each(tmp_path: Path) -> None:
    # flock belongs to an open file: a second claim in this process behaves like another worker
    assert [claim_slot(tmp_path, "audit.jsonl", 2) for _ in range(2)] == [1, 2]
    with pytest.raises(RuntimeError, match="all 2 worker slots are taken"):
        claim_slot(tmp_path, "audit.jsonl", 2)


def test_worker_one_keeps_the_configured_audit_file() -> None:
    path = Path("logs") / "audit.jsonl"
    assert worker_audit_path(path, 1) == path
    assert worker_audit_path(path, 3) == Path("logs") / "audit-3.jsonl"


def test_one_worker_changes_nothing_and_warns_of_nothing(tmp_path: Path) -> None:
    settings = load_settings({"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    assert worker_settings(settings) is settings
    assert several_workers_warnings(settings) == []
    assert list(tmp_path.iterdir()) == []


def test_several_workers_get_their_own_audit_files_and_warnings(tmp_path: Path) -> None:
    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "GATEWAY_WORKERS": "3"}
    settings = load_settings(env)
    audits = [worker_settings(settings).audit_log for _ in range(3)]
    assert audits == [tmp_path / "audit.jsonl", tmp_path / "audit-2.jsonl", tmp_path / "audit-3.jsonl"]
    warnings = " ".join(several_workers_warnings(settings))
    assert "session-era clients" in warnings and "up to 3 times its limit" in warnings
    shared = load_settings({**env, "GATEWAY_RATE_LIMIT_STORAGE": "redis://redis:6379/0"})
    assert "times its limit" not in " ".join(several_workers_warnings(shared))


def test_several_workers_share_one_request_state_key() -> None:
    environ: dict[str, str] = {}
    share_request_state_key(load_settings({}), environ)
    assert environ == {}  # one worker: its own random key, as before
    share_request_state_key(load_settings({"GATEWAY_WORKERS": "2"}), environ)
    key = environ["GATEWAY_REQUEST_STATE_KEYS"]
    assert len(load_settings({"GATEWAY_WORKERS": "2", **environ}).request_state_keys) == 1 and len(key) >= 32
    untouched: dict[str, str] = {}
    configured = {"GATEWAY_WORKERS": "2", "GATEWAY_REQUEST_STATE_KEYS": "k" * 32}
    share_request_state_key(load_settings(configured), untouched)
    assert untouched == {}  # the operator's keys are kept
