"""Hostile input: thousands of generated requests, never a 5xx, a traceback or a path.

In-process (the ASGI app through httpx, the echo fixture as a real downstream subprocess): 4,000
requests a run of the fast tiers, which must stay under 3 minutes (it was 10,400, the slowest test
of the tier by far); `FUZZ_EXAMPLES` raises the count for a longer run (2600 gives 10,400). The stdio
transport gets its own junk, line by line, to a real gateway process in
tests/process/test_fuzz_stdio.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_mcp_gateway.config import load
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.run.http_app import create_app
from agent_mcp_gateway.settings import load_settings

from conftest import fixture_server, initialize_message

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))  # x4 requests each
BOTH = "application/json, text/event-stream"
JSON = "application/json"
LEAKS = re.compile(r"Traceback|File \"|/site-packages/|\.py\b|/tmp/|/work/|/root/")
METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "resources/list",
    "resources/read",
    "notifications/initialized",
    "notifications/cancelled",
    "logging/setLevel",
    "completion/complete",
]
GATEWAY_TOOLS = [
    "list_servers",
    "search_tools",
    "get_server_tools",
    "execute_tool",
    "get_gateway_status",
    "nope",
]

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


arguments = st.fixed_dictionaries(
    {},
    optional={
        "agent_id": st.one_of(st.sampled_from(["builder", "ghost", "", "../x"]), json_value),
        "server": st.one_of(st.sampled_from(["echo", "nope", "*", "ech?"]), json_value),
        "tool": st.one_of(st.sampled_from(["echo", "add", "drop_table", "*"]), json_value),
        "args": st.one_of(st.fixed_dictionaries({"text": st.text(max_size=20)}), json_value),
        "timeout_ms": st.one_of(
            st.integers(min_value=-5, max_value=10**400), st.floats(), st.sampled_from([0, 1, 10**400])
        ),
        "names": json_value,
        "pattern": json_value,
        "max_schema_tokens": st.one_of(st.integers(min_value=-(10**20), max_value=10**20), json_value),
        "include_metadata": json_value,
    },
)
message = st.fixed_dictionaries(
    {
        "jsonrpc": st.one_of(st.just("2.0"), json_scalar),
        "method": st.one_of(st.sampled_from(METHODS), json_scalar),
    },
    optional={
        "id": st.one_of(
            st.integers(min_value=-(10**20), max_value=10**20), st.text(max_size=10), json_scalar
        ),
        "params": st.one_of(
            st.fixed_dictionaries({"name": st.sampled_from(GATEWAY_TOOLS), "arguments": arguments}),
            json_value,
        ),
    },
)
raw_body = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"jsonrpc":"2.0"}', b"1e999999"]),
    st.integers(min_value=60, max_value=3000).map(lambda depth: deep(depth).encode()),
    st.integers(min_value=60, max_value=3000).map(
        lambda depth: ('{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + deep(depth) + "}}").encode()
    ),
)
header_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
hostile_headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.one_of(st.just("application/json"), header_value),
        "accept": st.one_of(st.just(BOTH), st.just("application/json"), header_value),
        "mcp-protocol-version": st.one_of(
            st.sampled_from(["2025-06-18", "2025-11-25", "2026-07-28"]), header_value
        ),
        "x-agent-id": header_value,
        "x-request-id": header_value,
        "origin": st.one_of(st.just("http://localhost"), header_value),
        "authorization": header_value,
    },
)


def config_dir(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    servers, rules = root / ".mcp.json", root / ".mcp-gateway-rules.json"
    servers.write_text(json.dumps({"mcpServers": {"echo": fixture_server("echo")}}))
    rules.write_text(
        json.dumps(
            {"agents": {"builder": {"allow": {"servers": ["*"]}, "deny": {"tools": {"echo": ["drop_*"]}}}}}
        )
    )
    return servers, rules


class Fuzzer:
    def __init__(self, client: httpx.AsyncClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.sent = 0
        self.statuses: dict[int, int] = {}

    async def send(self, body: bytes, headers: dict[str, str], path: str = "/mcp") -> httpx.Response:
        response = await self.client.post(path, content=body, headers=headers)
        self.sent += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body[:300], headers, response.text[:500])
        assert not LEAKS.search(response.text), (body[:300], response.text[:500])
        return response


@pytest.fixture(scope="module")
async def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fuzzer]:
    root = tmp_path_factory.mktemp("fuzz")
    servers, rules = config_dir(root / "config")
    settings_ = load_settings(
        {"GATEWAY_AUDIT_LOG": str(root / "audit.jsonl"), "GATEWAY_RATE_LIMIT": "1000000/minute"}
    )
    app = create_app(Gateway(load(servers, rules), settings_))
    # The lifespan runs in a task of its own: a module-scoped fixture is torn down in another
    # task than it was set up in, and the lifespan's cancel scopes must enter and exit in one.
    started, finished = asyncio.Event(), asyncio.Event()

    async def hold_lifespan() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await finished.wait()

    lifespan = asyncio.create_task(hold_lifespan())
    await started.wait()
    try:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
            init = initialize_message("fuzz", request_id=0)
            response = await client.post("/mcp", json=init, headers={"accept": BOTH})
            session_id = response.headers["mcp-session-id"]
            await client.post(
                "/mcp",
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={"accept": BOTH, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"},
            )
            yield Fuzzer(client, session_id)
    finally:
        finished.set()
        await lifespan


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


SESSION_HEADERS = {"accept": BOTH, "content-type": JSON, "mcp-protocol-version": "2025-06-18"}
STILL_HERE = {
    "jsonrpc": "2.0",
    "id": 99,
    "method": "tools/call",
    "params": {
        "name": "execute_tool",
        "arguments": {
            "agent_id": "builder",
            "server": "echo",
            "tool": "echo",
            "args": {"text": "still here"},
        },
    },
}


async def fuzz_once(fuzzer: Fuzzer, message: dict[str, Any], body: bytes, headers: dict[str, str]) -> None:
    """One generated example: four requests, in and out of the session, to /mcp and to /."""
    session = {**SESSION_HEADERS, "mcp-session-id": fuzzer.session_id}
    encoded = json.dumps(message).encode()
    answer = await fuzzer.send(encoded, session)
    if answer.headers.get("content-type", "").startswith("application/json") and answer.content:
        payload = answer.json()
        if "error" in payload:
            assert isinstance(payload["error"]["code"], int)
            assert payload["error"]["code"] in range(-32768, -31999), payload
    await fuzzer.send(body, session)
    await fuzzer.send(encoded, {**session, **headers})
    await fuzzer.send(body, headers, path="/")


async def test_fuzzed_requests_never_get_5xx_or_leak(fuzzer: Fuzzer) -> None:
    """Hypothesis drives the examples from a thread of its own, each sent on this test's loop
    (where the gateway runs), so that the test can count what was sent and call the gateway
    after the last example."""
    loop = asyncio.get_running_loop()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(message=message, body=raw_body, headers=hostile_headers)
    def examples(message: dict[str, Any], body: bytes, headers: dict[str, str]) -> None:
        asyncio.run_coroutine_threadsafe(fuzz_once(fuzzer, message, body, headers), loop).result()

    before = fuzzer.sent
    await asyncio.to_thread(examples)
    assert fuzzer.sent - before >= 4 * min(EXAMPLES, 2500), fuzzer.sent - before
    session = {**SESSION_HEADERS, "mcp-session-id": fuzzer.session_id}
    response = await fuzzer.send(json.dumps(STILL_HERE).encode(), session)
    assert "still here" in response.text  # the gateway still works
    print(f"fuzz: {fuzzer.sent} requests, statuses {sorted(fuzzer.statuses.items())}, rss {rss_mb():.0f} MB")


async def test_calls_do_not_grow_memory(fuzzer: Fuzzer) -> None:
    """200 calls through the module's gateway (after the fuzzing when it ran first) cost little
    memory."""
    session = {**SESSION_HEADERS, "mcp-session-id": fuzzer.session_id}
    before = rss_mb()
    for _ in range(200):
        response = await fuzzer.send(json.dumps(STILL_HERE).encode(), session)
        assert "still here" in response.text
    assert rss_mb() - before < 50


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout_ms", 10**400), ("timeout_ms", -1), ("timeout_ms", 1e308), ("max_schema_tokens", 10**400)],
    ids=["timeout_huge", "timeout_negative", "timeout_float", "tokens_huge"],
)
async def test_out_of_range_numbers_are_invalid_params(fuzzer: Fuzzer, field: str, value: Any) -> None:
    tool = "execute_tool" if field == "timeout_ms" else "get_server_tools"
    arguments = {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "x"}, field: value}
    body = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    session = {
        "accept": JSON,
        "content-type": JSON,
        "mcp-session-id": fuzzer.session_id,
        "mcp-protocol-version": "2025-06-18",
    }
    response = await fuzzer.send(json.dumps(body).encode(), session)
    assert response.json()["error"]["code"] == -32602, response.text


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
async def test_deep_nesting_is_invalid_request(fuzzer: Fuzzer, depth: int) -> None:
    body = (
        '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_servers","arguments":'
        + deep(depth)
        + "}}"
    )
    session = {
        "accept": BOTH,
        "content-type": JSON,
        "mcp-session-id": fuzzer.session_id,
        "mcp-protocol-version": "2025-06-18",
    }
    response = await fuzzer.send(body.encode(), session)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600
    assert "nested deeper than 64" in response.json()["error"]["message"]


async def test_small_methods_cannot_carry_megabytes(fuzzer: Fuzzer) -> None:
    padding = [{}] * 200_000  # about 800 KB of empty objects, the memory-amplifying shape
    for method in ("initialize", "ping"):
        body = {"jsonrpc": "2.0", "id": 4, "method": method, "params": {"capabilities": {}, "x": padding}}
        response = await fuzzer.send(json.dumps(body).encode(), {"accept": BOTH, "content-type": JSON})
        assert response.status_code == 400
        assert f"a '{method}' message carries at most" in response.json()["error"]["message"]
