"""Traces exported over OTLP/HTTP by gateway processes (Granian, and stdio when its input ends)
to a receiver in this process that decodes the protobuf posts: one trace from the client through
the gateway to the downstream. Spans in process are in tests/inprocess/test_tracing.py."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conftest import (
    GatewayFiles,
    HttpFixtureServer,
    eventually,
    fixture_server,
    free_port,
    start_http_gateway,
    stdio_gateway,
)
from inprocess.test_tracing import (
    DOWNSTREAM_CHAIN,
    RULES,
    RawClient,
    ancestry,
    audit_line,
    parse_traceparent,
    received_headers,
    traceparent,
)


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver: decodes each protobuf post into (resource, span) pairs."""

    port: int = field(default_factory=free_port)
    spans: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    posts: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                if ok:
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend((resource, span) for span in scope_spans.spans)
                    receiver.posts += 1
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of_trace(self, trace_id: str) -> list[tuple[dict[str, Any], Any]]:
        return [(resource, span) for resource, span in list(self.spans) if span.trace_id.hex() == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture(scope="module")
def echo_http() -> Iterator[HttpFixtureServer]:
    server = HttpFixtureServer("echo")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


async def test_client_gateway_and_downstream_share_one_trace_over_otlp(
    receiver: OtlpReceiver, echo_http: HttpFixtureServer, gateway_files: GatewayFiles
) -> None:
    gateway_files.write_servers({"remote": {"description": "echo over HTTP", "url": echo_http.url}})
    gateway_files.write_rules(RULES)
    # Batches go out only at shutdown: the spans arrive only if the worker flushes on SIGTERM.
    gateway = start_http_gateway(
        gateway_files,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="gw-under-test",
        OTEL_BSP_SCHEDULE_DELAY="600000",
    )
    header, trace_id, client_span = traceparent()
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
            client = RawClient(http)
            await client.initialize()
            answer = await client.execute("request_headers", headers={"traceparent": header})
        sent_trace, sent_parent = parse_traceparent(received_headers(answer)["traceparent"])
        assert sent_trace == trace_id
        assert await eventually(lambda: audit_line(gateway_files, trace_id))
        await asyncio.sleep(0.5)
        assert receiver.of_trace(trace_id) == [], "exported before the shutdown flush"
    finally:
        assert gateway.stop() == 0, gateway.log_text()

    exported = await eventually(lambda: receiver.of_trace(trace_id), timeout=10)
    assert exported, gateway.log_text()
    resource = exported[0][0]
    host, _, pid = resource["service.instance.id"].rpartition("/")
    assert resource["service.name"] == "gw-under-test" and host and pid.isdigit(), resource
    assert resource["service.version"], resource
    links = {span.span_id.hex(): (span.name, span.parent_span_id.hex() or None) for _, span in exported}
    assert ancestry(links, sent_parent) == [*DOWNSTREAM_CHAIN, client_span]
    names = sorted(name for name, _ in links.values())
    assert names.count("gateway policy") == 1, names


async def test_a_stdio_gateway_exports_its_spans_when_its_input_ends(
    receiver: OtlpReceiver, gateway_files: GatewayFiles
) -> None:
    gateway_files.write_servers({"remote": fixture_server("echo")})
    gateway_files.write_rules(RULES)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    async with stdio_gateway(gateway_files, **env) as client:
        result = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "dev", "server": "remote", "tool": "echo", "args": {"text": "hi"}}
        )
        assert not result.is_error, result.content
    lines = await eventually(gateway_files.audit_lines)
    trace_id = lines[0]["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32, lines
    exported = await eventually(lambda: receiver.of_trace(trace_id), timeout=10)
    assert exported[0][0]["service.name"] == "agent-mcp-gateway"
    spans = {span.name: span for _, span in exported}
    operation = spans["tools/call execute_tool"]
    assert {a.key: _value(a.value) for a in operation.attributes}["gateway.decision"] == "ALLOW"
    for name in ("gateway policy", "gateway downstream"):
        assert spans[name].parent_span_id == operation.span_id, name
