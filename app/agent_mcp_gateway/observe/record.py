"""What an operation leaves behind: its span, its metric samples and its audit line, made in
exactly one place from the ended `Operation` (and, for a request refused before any operation
could start, from what the edge knew).

The series and the audit line are read under the operation's own snapshot, so a reload during
the call cannot relabel it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent_mcp_gateway.errors import GatewayError
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.observe.audit import AuditLog, AuditRecord
from agent_mcp_gateway.observe.metrics import ERRORS, bounded, operation_series, policy_series
from agent_mcp_gateway.operation import Operation


class Recorder:
    """Records operations to the audit log, the metrics and the trace."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    @contextmanager
    def recording(self, op: Operation, span_name: str | None) -> Iterator[None]:
        """Around one operation: its span while it runs, and its record once it has ended
        (whatever the outcome; failures are mapped onto `op` inside)."""
        span = tracing.begin_operation(op)
        if span_name is not None:
            tracing.name_operation(span, span_name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(op, time.perf_counter() - started)
            tracing.end_operation(span, op)

    def record(self, op: Operation, seconds: float) -> None:
        assert op.snapshot is not None  # pinned when the operation opened
        config = op.snapshot.config
        agent = bounded(op.agent_id, config.rules.agents)
        server = bounded(op.server, config.servers)
        count, duration = operation_series(op.name, agent, server, op.decision)
        count.inc()
        duration.observe(seconds)
        if op.rule is not None:
            policy_series(agent, "DENY" if op.error_code == "DENIED_BY_POLICY" else "ALLOW").inc()
        if op.error_code is not None:
            ERRORS.labels(op.error_code).inc()
        self.audit.write(
            AuditRecord(
                agent_id=op.agent_id or None,
                operation=op.name,
                server=op.server,
                tool=op.tool,
                decision=op.decision,
                rule=op.rule,
                error_code=op.error_code,
                latency_ms=round(seconds * 1000, 3),
                session_id=op.session_id,
                request_id=op.request_id,
                auth=op.auth,
                credential=op.credential,
                claimed_agent_id=op.claimed_agent_id if op.claimed_agent_id != op.agent_id else None,
                trace_id=op.trace_id,
            )
        )

    def refused(
        self,
        agent_id: str,
        operation: str,
        error: GatewayError,
        session_id: str | None,
        request_id: str | None,
    ) -> None:
        """A request the edge refused for an authenticated agent before any operation opened
        (an `initialize` over the agent's rate limit or session cap)."""
        ERRORS.labels(error.name).inc()
        self.audit.write(
            AuditRecord(
                agent_id=agent_id,
                operation=operation,
                server=None,
                tool=None,
                decision="DENY",
                rule="rate_limit",
                error_code=error.name,
                latency_ms=0.0,
                session_id=session_id,
                request_id=request_id,
            )
        )

    def unauthenticated(
        self,
        method: str | None,
        session_id: str | None,
        request_id: str | None,
        claimed_agent_id: str | None,
        presented: bool,
    ) -> None:
        """A request the edge refused for want of a valid credential (no operation opened)."""
        ERRORS.labels("UNAUTHENTICATED").inc()
        self.audit.write(
            AuditRecord(
                agent_id=None,
                operation=method or "http",
                server=None,
                tool=None,
                decision="DENY",
                rule="authentication",
                error_code="UNAUTHENTICATED",
                latency_ms=0.0,
                session_id=session_id,
                request_id=request_id,
                auth="invalid" if presented else "none",
                claimed_agent_id=claimed_agent_id,
            )
        )
