"""Issue #19: an HTTP server built with the official TypeScript SDK (tests/servers/ts_requests.mjs)
whose tool sends sampling and elicitation requests with `server.request` and no related request
id, so on its standalone GET stream, naming no call. With each agent's own downstream session
(isolation "agent", the default) they reach the calling agent's client, which answers, and the
call completes; another agent's client never gets them. A gateway that refused requests from
the standalone stream fails the call.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastmcp import Client

from conftest import NODE_MODULES, SERVERS, GatewayFiles, asgi_gateway, eventually, free_port, wait_for_port

FIXTURE = SERVERS / "ts_requests.mjs"
SDK = NODE_MODULES / "@modelcontextprotocol" / "sdk" / "package.json"
RULES = {"agents": {agent: {"allow": {"servers": ["*"]}} for agent in ("alpha", "beta")}}


@contextmanager
def ts_server() -> Iterator[str]:
    """The fixture on a free port: its URL."""
    assert SDK.is_file(), "the TypeScript SDK is missing: run ops/install-test-servers.sh"
    port = free_port()
    process = subprocess.Popen(
        ["node", str(FIXTURE), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process, what="the TypeScript SDK fixture server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Answers:
    """One client's sampling and elicitation handlers: they answer with the agent's name and
    keep what they were asked."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.asked: list[str] = []

    def handlers(self) -> dict[str, Any]:
        async def sample(messages: Any, params: Any, context: Any) -> str:
            self.asked.append(f"sampling: {messages[0].content.text}")
            return f"{self.agent}-sampled"

        async def elicit(message: str, response_type: Any, params: Any, context: Any) -> dict[str, str]:
            self.asked.append(f"elicitation: {message}")
            return {"answer": f"{self.agent}-elicited"}

        return {"sampling_handler": sample, "elicitation_handler": elicit}


async def ask(client: Client, agent: str) -> str:
    """execute_tool(ts, ask) as `agent`: the tool's text, which must not be an error."""
    result = await client.call_tool_mcp(
        "execute_tool", {"agent_id": agent, "server": "ts", "tool": "ask", "args": {}}
    )
    assert not result.is_error, result.content
    return str(result.content[0].text)


def expected(agent: str) -> str:
    return f"sampling: {agent}-sampled; elicitation: accept {agent}-elicited"


async def test_standalone_stream_requests_of_a_typescript_sdk_server_reach_the_calling_agent(
    gateway_files: GatewayFiles,
) -> None:
    alpha_answers, beta_answers = Answers("alpha"), Answers("beta")
    with ts_server() as url:
        gateway_files.write_servers({"ts": {"description": "TypeScript SDK server", "url": url}})
        gateway_files.write_rules(RULES)
        async with (
            asgi_gateway(gateway_files) as service,
            service.client(timeout=180, **alpha_answers.handlers()) as alpha,
            service.client(timeout=180, **beta_answers.handlers()) as beta,
        ):
            assert await eventually(lambda: service.gateway.ready, 60), "the downstream did not start"
            # alpha alone: beta's client is connected and hears nothing.
            assert await ask(alpha, "alpha") == expected("alpha")
            assert len(alpha_answers.asked) == 2 and beta_answers.asked == [], (
                alpha_answers.asked,
                beta_answers.asked,
            )
            # Both at once, each on its own downstream session: each answers its own only.
            alpha_text, beta_text = await asyncio.gather(ask(alpha, "alpha"), ask(beta, "beta"))
    assert alpha_text == expected("alpha") and beta_text == expected("beta"), (alpha_text, beta_text)
    assert len(alpha_answers.asked) == 4 and len(beta_answers.asked) == 2
    # Each downstream session named itself in what it asked: no request crossed between agents.
    alpha_sessions = {line.rsplit(" ", 1)[1] for line in alpha_answers.asked}
    beta_sessions = {line.rsplit(" ", 1)[1] for line in beta_answers.asked}
    assert len(alpha_sessions) == 1 and len(beta_sessions) == 1 and alpha_sessions != beta_sessions, (
        alpha_answers.asked,
        beta_answers.asked,
    )
