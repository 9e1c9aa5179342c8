"""Traces across client, gateway and downstream.

In process: the SDK's in-memory exporter collects the gateway's spans for calls sent over raw
HTTP with a W3C `traceparent` header, and the echo fixture over Streamable HTTP reports the
`traceparent` header it received. The export over OTLP/HTTP from gateway processes (Granian,
stdio) is in tests/process/test_tracing_otlp.py; the OTEL_* settings in
tests/unit/observe/test_tracing.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agent_mcp_gateway.observe import tracing

from conftest import (
    ACCEPT_BOTH,
    AsgiGateway,
    GatewayFiles,
    HttpFixtureServer,
    asgi_gateway,
    eventually,
    initialize_message,
    new_gateway_files,
)

RULES = {
    "agents": {
        "dev": {"allow": {"servers": ["remote"]}, "deny": {"tools": {"remote": ["drop_*"]}}},
        "ide": {"view": "aggregate", "allow": {"servers": ["remote"]}},
    },
}


# --- the pieces: a downstream over HTTP, a client that sends traceparent ----------------------


@pytest.fixture(scope="module")
def echo_http() -> Iterator[HttpFixtureServer]:
    """The echo fixture over HTTP; its `request_headers` tool returns the headers a call
    arrived with."""
    server = HttpFixtureServer("echo")
    server.start()
    yield server
    server.stop()


def traceparent() -> tuple[str, str, str]:
    """A client's new trace: (header value, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def parse_traceparent(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    sampled = int(flags, 16) & 1
    assert (version, sampled, len(trace_id), len(span_id)) == ("00", 1, 32, 16), value
    return trace_id, span_id


class RawClient:
    """A session-era MCP client over plain HTTP, so the only spans are the gateway's own."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.session_id = ""
        self.next_id = 10

    async def initialize(self) -> None:
        response = await self.http.post("/mcp", json=initialize_message("traced"), headers=ACCEPT_BOTH)
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        done = await self.http.post(
            "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers()
        )
        assert done.status_code == 202, done.text

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            **ACCEPT_BOTH,
            "mcp-session-id": self.session_id,
            "mcp-protocol-version": "2025-06-18",
            **extra,
        }

    async def execute(self, tool: str, headers: dict[str, str] | None = None, **args: Any) -> dict[str, Any]:
        """The JSON-RPC response of execute_tool(remote, tool, args) as agent `dev`."""
        arguments = {"agent_id": "dev", "server": "remote", "tool": tool, "args": args}
        return await self.call("execute_tool", arguments, headers)

    async def call(
        self, name: str, arguments: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The JSON-RPC response of tools/call(name, arguments)."""
        self.next_id += 1
        message = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        response = await self.http.post("/mcp", json=message, headers=self.headers(**(headers or {})))
        assert response.status_code == 200, response.text
        if response.headers["content-type"] == "application/json":  # the call lane's answer
            answer_json: dict[str, Any] = response.json()
            return answer_json
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                answer: dict[str, Any] = json.loads(line[5:])
                return answer
        raise AssertionError(f"no response in {response.text!r}")


def received_headers(answer: dict[str, Any]) -> dict[str, str]:
    """What the echo fixture's `request_headers` tool saw, from its answer through the gateway."""
    assert "result" in answer and not answer["result"].get("isError"), answer
    headers: dict[str, str] = answer["result"]["structuredContent"]
    return headers


# --- in process: the SDK's in-memory exporter -------------------------------------------------


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Every span of this process, fastmcp's and the MCP SDK's included, in memory; the gateway
    traces with the same provider, as `tracing.setup` arranges in a served process."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the API allows setting it once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider.add_span_processor(processor)
    tracing.use(provider)
    yield memory
    tracing.use(None)
    processor.shutdown()  # stops collecting: later test modules leave nothing in memory


@pytest.fixture(scope="module")
async def traced(
    exporter: InMemorySpanExporter, echo_http: HttpFixtureServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsgiGateway]:
    files = new_gateway_files(tmp_path_factory.mktemp("traced"))
    files.write_servers({"remote": {"description": "echo over HTTP", "url": echo_http.url}})
    files.write_rules(RULES)
    async with asgi_gateway(files) as service:
        yield service


@asynccontextmanager
async def raw_client(service: AsgiGateway) -> AsyncIterator[RawClient]:
    async with service.http() as http:
        client = RawClient(http)
        await client.initialize()
        yield client


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.context is not None and format(span.context.trace_id, "032x") == trace_id
    ]


async def collected(exporter: InMemorySpanExporter, trace_id: str, at_least: int) -> list[ReadableSpan]:
    """The trace's spans once at least `at_least` have ended (the last ones end after the answer)."""

    def enough() -> list[ReadableSpan]:
        spans = spans_of(exporter, trace_id)
        return spans if len(spans) >= at_least else []

    return await eventually(enough)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


# From the span whose context the downstream received up to the client's span: the gateway
# sends the call itself (`downstream_rpc`), in its downstream span.
DOWNSTREAM_CHAIN = [
    "gateway downstream",
    "tools/call execute_tool",  # fastmcp's server span: the operation
]


def ancestry(links: dict[str, tuple[str, str | None]], start: str) -> list[str]:
    """Span names from `start` up its parents (span id -> (name, parent id)), then the id of
    the first parent that is not among them."""
    names: list[str] = []
    at: str | None = start
    while at in links:
        name, at = links[at]
        names.append(name)
    return [*names, at or "(root)"]


def audit_line(files: GatewayFiles, trace_id: str) -> list[dict[str, Any]]:
    return [line for line in files.audit_lines() if line.get("trace_id") == trace_id]


async def test_a_call_continues_the_clients_trace_to_the_downstream(
    traced: AsgiGateway, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, client_span = traceparent()
    async with raw_client(traced) as client:
        sent = {"traceparent": header, "tracestate": "k=v", "baggage": "secret=1"}
        answer = await client.execute("request_headers", headers=sent)
    sent_on = received_headers(answer)

    spans = await collected(exporter, trace_id, 3)
    # The operation is fastmcp's span of the MCP request, annotated by the gateway.
    operation = one(spans, "tools/call execute_tool")
    assert operation.kind == SpanKind.SERVER and parent_id(operation) == client_span
    assert operation.parent is not None and operation.parent.is_remote
    assert operation.context is not None and operation.context.trace_state.get("k") == "v"
    assert operation.attributes is not None
    assert {key: operation.attributes.get(f"gateway.{key}") for key in ("agent_id", "server", "tool")} == {
        "agent_id": "dev",
        "server": "remote",
        "tool": "request_headers",
    }
    assert operation.attributes["gateway.decision"] == "ALLOW"
    assert operation.status.status_code == StatusCode.UNSET

    policy = one(spans, "gateway policy")
    assert parent_id(policy) == span_id(operation)
    assert policy.attributes is not None
    assert policy.attributes["gateway.decision"] == "ALLOW"
    assert (
        policy.attributes["gateway.rule"]
        == operation.attributes["gateway.rule"]
        == "agents.dev.allow.servers[0]"
    )

    downstream = one(spans, "gateway downstream")
    assert parent_id(downstream) == span_id(operation)
    assert downstream.attributes is not None and downstream.attributes["gateway.outcome"] == "ok"

    # The downstream got the trace in its request's header, from a span inside the downstream call
    # (the MCP SDK's, under fastmcp's client span).
    sent_trace, sent_parent = parse_traceparent(sent_on["traceparent"])
    assert sent_trace == trace_id
    links = {span_id(span): (span.name, parent_id(span)) for span in spans}
    assert ancestry(links, sent_parent) == [*DOWNSTREAM_CHAIN, client_span]
    assert sent_on.get("tracestate") == "k=v"
    assert "baggage" not in sent_on  # W3C trace context only: client data is not passed on

    lines = await eventually(lambda: audit_line(traced.files, trace_id))
    assert [(line["tool"], line["decision"]) for line in lines] == [("request_headers", "ALLOW")]


async def test_a_denied_call_is_traced_and_audited_with_its_rule(
    traced: AsgiGateway, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, _ = traceparent()
    async with raw_client(traced) as client:
        answer = await client.execute("drop_table", headers={"traceparent": header}, table="t")
    assert answer["error"]["data"]["code"] == "DENIED_BY_POLICY", answer

    spans = await collected(exporter, trace_id, 2)
    policy = one(spans, "gateway policy")
    assert policy.attributes is not None
    assert policy.attributes["gateway.decision"] == "DENY"
    assert policy.attributes["gateway.rule"] == "agents.dev.deny.tools.remote[0]"
    operation = one(spans, "tools/call execute_tool")
    assert parent_id(policy) == span_id(operation)
    assert operation.status.status_code == StatusCode.ERROR
    assert operation.attributes is not None
    assert operation.attributes["gateway.decision"] == "DENY"
    assert operation.attributes["gateway.error_code"] == "DENIED_BY_POLICY"
    assert [span.name for span in spans if span.name.startswith("gateway ")] == ["gateway policy"]
    lines = await eventually(lambda: audit_line(traced.files, trace_id))
    assert [(line["decision"], line["rule"]) for line in lines] == [
        ("DENY", "agents.dev.deny.tools.remote[0]")
    ]


async def test_a_fastmcp_clients_trace_in_meta_is_continued(
    traced: AsgiGateway, exporter: InMemorySpanExporter
) -> None:
    """fastmcp and the MCP SDK carry the trace in the request's `_meta` instead of a header."""
    with trace.get_tracer("test").start_as_current_span("agent") as agent:
        trace_id = format(agent.get_span_context().trace_id, "032x")
        async with traced.client() as client:
            result = await client.call_tool(
                "execute_tool", {"agent_id": "dev", "server": "remote", "tool": "request_headers"}
            )
    assert parse_traceparent(result.structured_content["traceparent"])[0] == trace_id
    spans = await collected(exporter, trace_id, 6)
    served = [
        span for span in spans if span.name == "tools/call execute_tool" and span.kind == SpanKind.SERVER
    ]
    assert len(served) == 1 and served[0].attributes is not None
    assert served[0].attributes["gateway.decision"] == "ALLOW"
    assert parent_id(one(spans, "gateway downstream")) == span_id(served[0])
    links = {span_id(span): (span.name, parent_id(span)) for span in spans}
    assert ancestry(links, span_id(served[0])) == [
        "tools/call execute_tool",  # the gateway's (fastmcp's server span)
        "MCP send tools/call execute_tool",  # the client's, whose context went in `_meta`
        "tools/call execute_tool",  # fastmcp's client span
        "agent",
        "(root)",
    ]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_trace_in_meta_crosses_the_hop_in_both_eras(
    traced: AsgiGateway, exporter: InMemorySpanExporter, mode: str
) -> None:
    """A client's W3C trace context in `_meta` (`auto`: a 2026-07-28 client, whose requests carry
    no session) parents the gateway's span, and the downstream's request carries the gateway's
    span in its own `_meta`: one trace from the agent to the server."""
    with trace.get_tracer("test").start_as_current_span("agent") as agent:
        trace_id = format(agent.get_span_context().trace_id, "032x")
        async with traced.client(mode, headers={"X-Agent-Id": "ide"}) as client:
            assert (client.protocol_version == "2026-07-28") is (mode == "auto")
            result = await client.call_tool("remote__request_meta", {})
    carried = result.structured_content
    assert carried is not None and "traceparent" in carried, carried
    sent_trace, sent_parent = parse_traceparent(carried["traceparent"])
    assert sent_trace == trace_id
    spans = await collected(exporter, trace_id, 6)
    served = [span for span in spans if span.name == "tools/call remote__request_meta"]
    served = [span for span in served if span.kind == SpanKind.SERVER]
    assert len(served) == 1
    links = {span_id(span): (span.name, parent_id(span)) for span in spans}
    assert "agent" in ancestry(links, span_id(served[0]))
    assert span_id(served[0]) in ancestry_ids(links, sent_parent)


def ancestry_ids(links: dict[str, tuple[str, str | None]], start: str) -> list[str]:
    """The span ids from `start` up to the root."""
    ids, current = [], start
    while current in links:
        ids.append(current)
        current = links[current][1] or ""
    return ids


async def test_an_aggregate_view_call_is_traced_the_same_way(
    traced: AsgiGateway, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, client_span = traceparent()
    async with raw_client(traced) as client:
        answer = await client.call(
            "remote__request_headers", {}, headers={"traceparent": header, "X-Agent-Id": "ide"}
        )
    sent_trace, sent_parent = parse_traceparent(received_headers(answer)["traceparent"])
    assert sent_trace == trace_id
    spans = await collected(exporter, trace_id, 3)
    operation = one(spans, "tools/call remote__request_headers")  # fastmcp's span, named by the gateway
    assert operation.attributes is not None and parent_id(operation) == client_span
    assert (operation.attributes["gateway.operation"], operation.attributes["gateway.tool"]) == (
        "tools/call",
        "request_headers",
    )
    assert parent_id(one(spans, "gateway policy")) == span_id(operation)
    links = {span_id(span): (span.name, parent_id(span)) for span in spans}
    assert ancestry(links, sent_parent) == [
        *DOWNSTREAM_CHAIN[:-1],
        "tools/call remote__request_headers",
        client_span,
    ]
    lines = await eventually(lambda: audit_line(traced.files, trace_id))
    assert [(line["agent_id"], line["operation"]) for line in lines] == [("ide", "tools/call")]


@pytest.mark.parametrize("header", [None, "00-not-a-trace-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"])
async def test_without_a_valid_traceparent_the_trace_starts_at_the_gateway(
    traced: AsgiGateway, exporter: InMemorySpanExporter, header: str | None
) -> None:
    async with raw_client(traced) as client:
        answer = await client.execute("request_headers", headers={"traceparent": header} if header else None)
    trace_id, _ = parse_traceparent(received_headers(answer)["traceparent"])
    assert trace_id != "0" * 32 and (header is None or trace_id not in header)
    spans = await collected(exporter, trace_id, 2)
    operation = one(spans, "tools/call execute_tool")
    assert operation.parent is None  # a root: nothing of the bad header was kept
    assert parent_id(one(spans, "gateway downstream")) == span_id(operation)
    assert await eventually(lambda: audit_line(traced.files, trace_id))


async def test_tracing_off_adds_no_spans_headers_or_trace_ids(
    exporter: InMemorySpanExporter, echo_http: HttpFixtureServer, gateway_files: GatewayFiles
) -> None:
    gateway_files.write_servers({"remote": {"description": "echo over HTTP", "url": echo_http.url}})
    gateway_files.write_rules(RULES)
    header, _, _ = traceparent()
    exporter.clear()
    tracing.use(None)
    try:
        async with asgi_gateway(gateway_files) as service, raw_client(service) as client:
            answer = await client.execute("request_headers", headers={"traceparent": header})
    finally:
        tracing.use(trace.get_tracer_provider())
    assert "traceparent" not in received_headers(answer)
    spans = exporter.get_finished_spans()
    assert not [span for span in spans if span.name.startswith("gateway ")], "gateway spans while off"
    operation = [span for span in spans if span.attributes and span.attributes.get("gateway.agent_id")]
    assert operation == [], "gateway attributes while off"
    lines = await eventually(gateway_files.audit_lines)
    assert [line["trace_id"] for line in lines] == [None]
