"""What tracing costs a call: the same gateway with and without OTEL_EXPORTER_OTLP_ENDPOINT.

Starts, as in bench_gateway.py, the echo fixture server over Streamable HTTP and two gateways in
front of it, one without tracing and one exporting over OTLP/HTTP to a receiver in this process
(which decodes every batch and counts its spans). Every call carries a client `traceparent`.
Sequential `execute_tool` calls alternate between the two gateways in random order, so machine
noise hits both alike; printed as JSON: p50/p95 per gateway, their difference, and the CPU each
Granian worker spent per call. Then, in this process, the gateway's own tracing hooks for one call
(operation, policy and downstream spans) with tracing off and on, in CPU microseconds: on a busy
machine the end-to-end difference is within the noise, and these say what it is made of.

    python benchmarks/bench_tracing.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.common import ROOT, BenchError, log, summarize_ms
from gateway.load import Session, alternated, warm_up
from gateway.stack import Child, Stack, children_of, cpu_seconds, free_port, spawn, wait_http
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.operation import Operation


class SpanSink:
    """An OTLP/HTTP trace receiver that counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                sink.spans += sum(
                    len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_traced(stack: Stack, sink: SpanSink) -> tuple[Child, str]:
    """A second gateway on the same configuration, exporting traces to `sink`."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "GATEWAY_TRANSPORT": "http",
        "GATEWAY_MCP_CONFIG": stack.gateway_env["GATEWAY_MCP_CONFIG"],
        "GATEWAY_RULES": stack.gateway_env["GATEWAY_RULES"],
        "GATEWAY_RATE_LIMIT": "1000000/minute",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_HTTP_PORT": str(port),
        "GATEWAY_AUDIT_LOG": str(stack.work / "traced-audit.jsonl"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
    }
    child = spawn("traced", [sys.executable, "-m", "agent_mcp_gateway"], env, stack.work, stack.work)
    base = f"http://127.0.0.1:{port}"
    wait_http(child, f"{base}/ready", 90, ok=(200,))
    return child, f"{base}/mcp"


async def measure(stack: Stack, traced_url: str, traced_pid: int, calls: int, warmup: int) -> dict[str, Any]:
    paths = {"off": Session(stack.gateway_url, True), "on": Session(traced_url, True)}
    workers = {"off": stack.worker_pid(), "on": traced_pid}
    for session in paths.values():
        session.headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    try:
        for session in paths.values():
            await session.open()
        await warm_up(paths.values(), warmup)
        cpu_before = {name: cpu_seconds(pid) for name, pid in workers.items()}
        timings = await alternated(paths, calls, seed=7)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in workers.items()}
    finally:
        for session in paths.values():
            await session.close()
    off, on = summarize_ms(timings["off"]), summarize_ms(timings["on"])
    return {
        "off": {**off, "worker_cpu_ms_per_call": round(cpu["off"] * 1000 / calls, 3)},
        "on": {**on, "worker_cpu_ms_per_call": round(cpu["on"] * 1000 / calls, 3)},
        "tracing_cost_p50_ms": round(on["p50"] - off["p50"], 3),
        "tracing_cost_p95_ms": round(on["p95"] - off["p95"], 3),
        "tracing_cpu_ms_per_call": round((cpu["on"] - cpu["off"]) * 1000 / calls, 3),
    }


class _Dropped(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def hooks_us(rounds: int = 20_000) -> float:
    """CPU microseconds (this process's, the export thread's included) the gateway's tracing
    hooks add to one call, with the current `tracing` state."""
    op = Operation("execute_tool", "r1", agent_id="bench", server="echo", tool="echo", rule="agents.bench")
    headers: dict[str, str] = {}
    started = time.process_time()
    for _ in range(rounds):
        scope = tracing.begin_operation(op)
        tracing.policy_decided("bench", "echo", "echo", True, "agents.bench")
        downstream = tracing.begin_downstream("echo", "execute_tool", "echo")
        tracing.inject(headers)
        tracing.end_downstream(downstream, "ok")
        tracing.end_operation(scope, op)
    return round((time.process_time() - started) / rounds * 1e6, 3)


def hook_costs() -> dict[str, float]:
    off = hooks_us()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    trace.set_tracer_provider(provider)
    tracing.use(provider)
    with trace.get_tracer("bench").start_as_current_span("tools/call execute_tool"):  # fastmcp's
        on = hooks_us()
    tracing.use(None)
    provider.shutdown()
    return {"hooks_off_us_per_call": off, "hooks_on_us_per_call": on}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per gateway (default 400)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    stack, sink, traced = Stack(work), SpanSink(), None
    load_before = os.getloadavg()[0]
    try:
        log(f"starting the echo server and two gateways (working directory {work})")
        stack.start("WARNING")
        traced, traced_url = start_traced(stack, sink)
        pid = children_of(traced.process.pid)[0]
        log(f"{options.calls} calls per gateway, alternated")
        report = asyncio.run(measure(stack, traced_url, pid, options.calls, warmup=min(50, options.calls)))
        time.sleep(2)  # one more export interval
        report["spans_exported_per_call"] = round(sink.spans / (options.calls + min(50, options.calls)), 2)
        report.update(hook_costs())
        report["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        if traced is not None:
            traced.stop()
        stack.stop()
        sink.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
