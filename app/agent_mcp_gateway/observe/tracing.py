"""Traces: the client's W3C trace context in, the gateway's spans out over OTLP, the context on
to HTTP downstreams.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set: then nothing here is installed, no span is
made by the gateway or fastmcp (its telemetry mode is `off`) and the OpenTelemetry SDK is not
even imported (the MCP SDK's own spans go to the API's no-op tracer). On, one tracer provider
per process exports in batches from a background thread, and each gateway operation is traced
as (here `execute_tool`; in the aggregate view a `tools/call`, `prompts/get` or
`resources/read` of a downstream's own name)

    tools/call execute_tool          fastmcp's SERVER span (child of the client's traceparent),
                                     annotated with the operation: gateway.agent_id, .server,
                                     .tool, .decision, .rule, .error_code, .auth, .request_id
      gateway policy                 the decision and the rule that made it
      gateway downstream             the request to the downstream server and its outcome
        tools/call echo              fastmcp's CLIENT span
          MCP send tools/call echo   the MCP SDK's; its context goes out in `_meta` and, over
                                     HTTP, in the request's `traceparent` header

The operation is fastmcp's span rather than one of the gateway's own: a span of ours made
current there would stop fastmcp from annotating its own and make it open a second one.

fastmcp takes a parent from a request's `_meta` but not from HTTP headers, so `TraceContext`
attaches the headers' context for the request; the MCP SDK runs each message's handler in the
context of the request that carried it, so fastmcp's span becomes its child.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from contextvars import Token
from typing import TYPE_CHECKING, NamedTuple

import fastmcp
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_mcp_gateway import __version__
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

INSTRUMENTATION = "agent_mcp_gateway"
# W3C trace context only: `traceparent` and `tracestate` are read from clients and sent on, never
# `baggage` (arbitrary client data would reach every downstream) or OTEL_PROPAGATORS' others.
W3C = TraceContextTextMapPropagator()

_tracer: Tracer | None = None  # None: tracing is off
_exporting: TracerProvider | None = None  # the provider `setup` installed, flushed by `shutdown`


class OpenSpan(NamedTuple):
    """A span and, when the gateway opened it and made it current, the token `_close` needs."""

    span: Span
    token: Token[Context] | None


def setup(settings: Settings) -> None:
    """Export traces over OTLP/HTTP when a collector is named; once per process (a Granian
    worker or a stdio gateway). The exporter reads the rest of `OTEL_EXPORTER_OTLP_*` itself."""
    global _exporting
    if settings.otel_endpoint is None:
        # Nothing would export fastmcp's spans, yet it makes three no-op spans per request (its
        # request, tool and client spans: measured at 0.2 ms of worker CPU per call); `off` makes
        # its span helpers a pass-through. The MCP SDK still carries a trace context in `_meta`.
        fastmcp.settings.telemetry_mode = "off"
        return
    if _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": settings.otel_service_name,
            "service.instance.id": f"{socket.gethostname()}/{os.getpid()}",
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use(provider)
    _exporting = provider


def shutdown() -> None:
    """Send the last batch of spans (at most 30 s, the SDK's bound); the server's lifespan calls
    this at its end because a Granian worker exits without running `atexit` handlers."""
    global _exporting
    if _exporting is not None:
        _exporting.shutdown()
        _exporting = None


def use(provider: trace.TracerProvider | None) -> None:
    """Make the gateway's spans with `provider`, or none at all (None)."""
    global _tracer
    _tracer = provider.get_tracer(INSTRUMENTATION, __version__) if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


class TraceContext:
    """ASGI middleware: a request's `traceparent`/`tracestate` headers become the current trace
    context while the request runs (an invalid header is ignored: the trace starts here)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = context.attach(W3C.extract(Headers(scope=scope)))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current trace context into an outgoing request's headers (a mutable mapping)."""
    if _tracer is not None:
        W3C.inject(headers)


def _open(name: str) -> OpenSpan:
    assert _tracer is not None
    span = _tracer.start_span(name)
    return OpenSpan(span, context.attach(trace.set_span_in_context(span)))


def _close(scope: OpenSpan, error: str | None) -> None:
    if scope.token is not None:
        context.detach(scope.token)
    if error is not None:
        scope.span.set_status(StatusCode.ERROR, error)
    scope.span.end()


def begin_operation(op: Operation) -> OpenSpan | None:
    """The operation's span: fastmcp's span of the MCP request, which the gateway annotates,
    or one of the gateway's own when fastmcp makes none (FASTMCP_TELEMETRY_MODE). Notes the
    trace id on the operation for its audit line."""
    if _tracer is None:
        return None
    current = trace.get_current_span()
    scope = OpenSpan(current, None) if current.is_recording() else _open(f"gateway {op.name}")
    found = scope.span.get_span_context()
    if found.is_valid:
        op.trace_id = format(found.trace_id, "032x")
    return scope


def name_operation(scope: OpenSpan | None, name: str) -> None:
    """Name the operation's span after its target, as fastmcp names the span of a tool it runs
    itself (`tools/call {tool}`)."""
    if scope is not None:
        scope.span.update_name(name)


def end_operation(scope: OpenSpan | None, op: Operation) -> None:
    if scope is None:
        return
    attributes = {
        "gateway.operation": op.name,
        "gateway.agent_id": op.agent_id,
        "gateway.server": op.server,
        "gateway.tool": op.tool,
        "gateway.decision": op.decision,
        "gateway.rule": op.rule,
        "gateway.error_code": op.error_code,
        "gateway.auth": op.auth,
        "gateway.request_id": op.request_id,
    }
    scope.span.set_attributes({key: value for key, value in attributes.items() if value})
    if scope.token is not None:
        _close(scope, op.error_code)


def policy_decided(agent_id: str, server: str, tool: str | None, allowed: bool, rule: str) -> None:
    """Record a policy decision as a span under the operation's. It lasts no time worth
    measuring (about a microsecond); the span says that it was made, how, and by which rule."""
    if _tracer is None:
        return
    attributes = {
        "gateway.agent_id": agent_id,
        "gateway.server": server,
        "gateway.decision": "ALLOW" if allowed else "DENY",
        "gateway.rule": rule,
    }
    if tool is not None:
        attributes["gateway.tool"] = tool
    _tracer.start_span("gateway policy", attributes=attributes).end()


def begin_downstream(server: str, operation: str, target: str) -> OpenSpan | None:
    """Open the span of one request to a downstream server (a tool call, a prompt, a resource);
    the downstream client's own spans nest in it."""
    if _tracer is None:
        return None
    scope = _open("gateway downstream")
    scope.span.set_attributes(
        {"gateway.server": server, "gateway.operation": operation, "gateway.target": target}
    )
    return scope


def end_downstream(scope: OpenSpan | None, outcome: str) -> None:
    if scope is None:
        return
    scope.span.set_attribute("gateway.outcome", outcome)
    _close(scope, None if outcome in ("ok", "tool_error") else outcome)
