"""Prometheus metrics: what the gateway counts and times, on one registry of its own.

Label values are bounded: agents and servers that are not in the loaded configuration are
reported as `unknown`, so a caller inventing ids cannot grow the series count.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from agent_mcp_gateway import __version__

# 1 ms to 10 s: the gateway's own overhead sits at the bottom, slow downstream tools at the top.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN = "unknown"
NONE = "none"

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Info("gateway_build", "Gateway version.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

OPERATIONS = Counter(
    "gateway_operations_total",
    "Gateway tool operations by agent, server and outcome (ALLOW, DENY, ERROR).",
    ["operation", "agent", "server", "outcome"],
    registry=REGISTRY,
)
OPERATION_SECONDS = Histogram(
    "gateway_operation_duration_seconds",
    "Gateway tool operation latency, including the downstream call.",
    ["operation", "agent", "server", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
POLICY_DECISIONS = Counter(
    "gateway_policy_decisions_total",
    "Policy decisions by agent and decision.",
    ["agent", "decision"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "gateway_errors_total",
    "Gateway errors by JSON-RPC error name.",
    ["code"],
    registry=REGISTRY,
)
DOWNSTREAM_UP = Gauge(
    "gateway_downstream_up",
    "1 when the downstream server's session is connected, else 0.",
    ["server"],
    registry=REGISTRY,
)
DOWNSTREAM_SECONDS = Histogram(
    "gateway_downstream_call_duration_seconds",
    "Latency of calls to downstream servers.",
    ["server", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DOWNSTREAM_RESTARTS = Counter(
    "gateway_downstream_reconnects_total",
    "Reconnect attempts to downstream servers.",
    ["server"],
    registry=REGISTRY,
)
DOWNSTREAM_CIRCUIT_OPEN = Gauge(
    "gateway_downstream_circuit_open",
    "1 while the downstream server's circuit breaker is open or half-open (calls fail fast), else 0.",
    ["server"],
    registry=REGISTRY,
)
DOWNSTREAM_INSTANCES = Gauge(
    "gateway_downstream_instances",
    "Downstream sessions (stdio: processes) a server runs for agents or client sessions, "
    "beside its shared one.",
    ["server"],
    registry=REGISTRY,
)
DOWNSTREAM_UNROUTED = Counter(
    "gateway_downstream_unrouted_total",
    "Messages a downstream server sent (its requests, log messages) that the gateway could not "
    "attribute to exactly one caller's client, and so dropped.",
    ["server", "kind"],
    registry=REGISTRY,
)
DOWNSTREAM_JUNK_LINES = Counter(
    "gateway_downstream_junk_lines_total",
    "Lines a stdio downstream wrote to stdout that were not JSON-RPC messages (skipped).",
    ["server"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "gateway_http_requests_total",
    "HTTP requests by route, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "gateway_http_request_duration_seconds",
    "HTTP request latency by route (time to the response start).",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ACTIVE_SESSIONS = Gauge(
    "gateway_active_sessions",
    "MCP sessions currently open over HTTP.",
    registry=REGISTRY,
)
SESSION_LIMIT = Gauge(
    "gateway_session_limit",
    "The most MCP sessions the gateway holds at once.",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429 by agent.",
    ["agent"],
    registry=REGISTRY,
)
RATE_LIMIT_STORAGE_FALLBACK = Gauge(
    "gateway_rate_limit_storage_fallback",
    "1 while the shared rate-limit storage (Redis) is unreachable and this process counts alone, else 0.",
    registry=REGISTRY,
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "gateway_rate_limit_storage_errors_total",
    "Failed operations on the shared rate-limit storage (charges and background probes).",
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total",
    "Configuration reloads by outcome (success, failure).",
    ["outcome"],
    registry=REGISTRY,
)
CONFIG_LAST_RELOAD_OK = Gauge(
    "gateway_config_last_reload_successful",
    "1 when the last configuration reload was applied, 0 when it was rejected.",
    registry=REGISTRY,
)
AUDIT_REFUSALS_SUPPRESSED = Counter(
    "gateway_audit_refusals_suppressed_total",
    "Unauthenticated refusals over the audit rate: counted here instead of written.",
    registry=REGISTRY,
)
AUDIT_WRITE_FAILURES = Counter(
    "gateway_audit_write_failures_total",
    "Audit lines that could not be written.",
    registry=REGISTRY,
)

TOOLS_QUARANTINED = Gauge(
    "gateway_tools_quarantined",
    "Tools of a pin_tools server hidden and refused because their definition differs from its pin.",
    ["server"],
    registry=REGISTRY,
)
QUARANTINED_CALLS = Counter(
    "gateway_quarantined_tool_calls_total",
    "Calls refused because the tool is quarantined (its definition changed since it was pinned).",
    ["server"],
    registry=REGISTRY,
)


def bounded(value: str | None, known: object) -> str:
    """A label value that is either a configured name, `none` or `unknown`."""
    if not value:
        return NONE
    return value if value in known else UNKNOWN  # type: ignore[operator]


# `.labels()` takes a lock and builds a key on every call; the label sets of the hot path are
# few (bounded names), so their children are looked up once and kept.
@lru_cache(maxsize=4096)
def operation_series(operation: str, agent: str, server: str, outcome: str) -> tuple[Counter, Histogram]:
    """The OPERATIONS and OPERATION_SECONDS children of one label set."""
    return (
        OPERATIONS.labels(operation, agent, server, outcome),
        OPERATION_SECONDS.labels(operation, agent, server, outcome),
    )


@lru_cache(maxsize=1024)
def downstream_series(server: str, outcome: str) -> Histogram:
    """The DOWNSTREAM_SECONDS child of one label set."""
    return DOWNSTREAM_SECONDS.labels(server, outcome)


@lru_cache(maxsize=1024)
def http_series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    """The HTTP_REQUESTS and HTTP_SECONDS children of one request's labels (bounded: known
    routes, known methods, HTTP status codes)."""
    return HTTP_REQUESTS.labels(route, method, str(status)), HTTP_SECONDS.labels(route, method)


@lru_cache(maxsize=1024)
def policy_series(agent: str, decision: str) -> Counter:
    """The POLICY_DECISIONS child of one label set."""
    return POLICY_DECISIONS.labels(agent, decision)
