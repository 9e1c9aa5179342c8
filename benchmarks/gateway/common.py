"""What every part of the gateway benchmark shares: the constants (agents, tokens, protocol
eras, targets), the error that invalidates a run, percentiles, the results record and the log."""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ECHO_SERVER = ROOT / "tests" / "servers" / "echo.py"
AGENT = "bench"
# The gateway path authenticates like a production client: a bearer token whose hash is in the
# rules (so the figures include the credential check).
TOKEN = secrets.token_urlsafe(32)
AGGREGATE_AGENT = "bench-aggregate"  # the same downstreams under `{server}__{tool}` names
AGGREGATE_TOKEN = secrets.token_urlsafe(32)
PROTOCOL = "2025-11-25"
MODERN = "2026-07-28"  # no session: every request carries its protocol version and capabilities
ERAS = (PROTOCOL, MODERN)
STDIO_SERVER = "estdio"  # the echo fixture over stdio behind the gateway
ACCEPT = "application/json, text/event-stream"
TARGET_E2E_P95_MS = 100.0
TARGET_OVERHEAD_P95_MS = 30.0
TARGET_LOOKUP_MS = 1.0
TARGET_MEMORY_GROWTH_PCT = 5.0  # "no growth" read as: under 5 % from round 2 to the last round
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """Something could not be started or a call failed: the run is not valid."""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50": round(percentile(ms, 0.50), 3),
        "p95": round(percentile(ms, 0.95), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(max(ms), 3) if ms else float("nan"),
        "mean": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


@dataclass
class Results:
    config: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    sessions: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Any] = field(default_factory=dict)
    closed_loop: dict[str, Any] = field(default_factory=dict)
    discovery: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    idle_sessions: dict[str, Any] = field(default_factory=dict)
    rss_calls: dict[str, Any] = field(default_factory=dict)
    startup: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)
