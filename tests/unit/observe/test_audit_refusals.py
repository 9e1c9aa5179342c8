"""Audit findings of the security review (SECURITY.md, "Audit history"): unauthenticated requests
cannot evict authenticated history. Refusals go to a log of their own, each line is bounded, and
over a rate they are counted instead of written. (The property over refused HTTP requests is in
tests/process/test_auth.py, against its shared secured gateway.)
"""

from __future__ import annotations

import json
from pathlib import Path

from agent_mcp_gateway.observe.audit import REFUSAL_BURST, AuditLog, AuditRecord, verify
from agent_mcp_gateway.observe.metrics import AUDIT_REFUSALS_SUPPRESSED

from unit.observe.test_audit import record


def refusal(claimed: str = "someone") -> AuditRecord:
    return record(
        agent_id=None,
        decision="DENY",
        rule="authentication",
        error_code="UNAUTHENTICATED",
        claimed_agent_id=claimed,
    )


def test_a_refusal_flood_never_evicts_decisions(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=4000, backups=1)
    audit.write(record(request_id="the-authenticated-call"))
    suppressed = AUDIT_REFUSALS_SUPPRESSED._value.get()
    for _ in range(int(REFUSAL_BURST) + 300):
        audit.write(refusal("x" * 10_000))
    audit.close()

    decisions = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["request_id"] for line in decisions] == ["the-authenticated-call"]
    assert verify([path]).problem is None
    refusals = [path.with_name("audit.jsonl.refusals"), path.with_name("audit.jsonl.refusals.1")]
    assert refusals and all(file.stat().st_size <= 4000 for file in refusals)
    assert AUDIT_REFUSALS_SUPPRESSED._value.get() - suppressed >= 250  # over the burst: counted only
