"""Resumable streams: a session-era client whose connection drops in the middle of a call
reconnects with Last-Event-ID and gets the call's result, replayed from the gateway's event
store. Against a real Granian process: the drop is a real closed socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from conftest import GatewayFiles, fixture_server, initialize_message, start_http_gateway

PROTOCOL = "2025-11-25"  # the first version whose streams are primed for resumption
SLEEP_SECONDS = 5  # the call outlives the connection it was sent on
STREAM = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE events of `response`, each as its fields (`id`, `retry`, `data`)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = fields.get(name, "") + value.removeprefix(" ")


async def test_a_dropped_call_resumes_with_last_event_id(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"slow": fixture_server("slow")})
    gateway_files.write_rules({"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["slow"]}}}})
    gateway = start_http_gateway(gateway_files)
    agent = {"X-Agent-Id": "ide"}
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=120, headers=agent) as http:
            initialize = initialize_message()
            initialize["params"]["protocolVersion"] = PROTOCOL
            opened = await http.post("/mcp", json=initialize, headers=STREAM)
            assert opened.status_code == 200, opened.text
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": PROTOCOL}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            acknowledged = await http.post("/mcp", json=initialized, headers={**STREAM, **session})
            assert acknowledged.status_code == 202

            call: dict[str, Any] = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "slow__sleep", "arguments": {"seconds": SLEEP_SECONDS}},
            }
            async with http.stream("POST", "/mcp", json=call, headers={**STREAM, **session}) as response:
                assert response.status_code == 200
                priming = await anext(aiter(events(response)))
            # Leaving the block closed the connection with the call still running.
            assert priming["id"] and priming["retry"] == "1000" and not priming.get("data")

            resume = {**session, "Accept": "text/event-stream", "Last-Event-ID": priming["id"]}
            async with http.stream("GET", "/mcp", headers=resume) as resumed:
                assert resumed.status_code == 200
                async for event in events(resumed):
                    if event.get("data"):
                        break
            answer = httpx.Response(200, content=event["data"]).json()
            assert answer["id"] == 7, answer
            assert answer["result"]["content"][0]["text"] == f"slept {SLEEP_SECONDS}", answer

            # Another session cannot replay this one's stream: its resumption ends at once, empty.
            other = await http.post("/mcp", json=initialize, headers=STREAM)
            theirs = {**resume, "Mcp-Session-Id": other.headers["mcp-session-id"]}
            replayed = await http.get("/mcp", headers=theirs)
            assert replayed.status_code == 200, replayed.text
            assert '"id":7' not in replayed.text.replace(" ", ""), replayed.text
    finally:
        gateway.stop()
