"""Downstream isolation: each agent (or client session) has a downstream session of its own, and
what a server sends on it reaches its owner only; a shared session relays only what it can
attribute exactly. Real gateway (in process, over Streamable HTTP), real server processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastmcp import Client
from mcp import MCPError

from agent_mcp_gateway.config import ConfigError, load_mcp_config
from agent_mcp_gateway.settings import SettingsError, load_settings

from conftest import (
    EVERYTHING,
    AsgiGateway,
    GatewayFiles,
    asgi_gateway,
    eventually,
    everything_server,
    fixture_server,
    free_port,
    listening,
    metric,
    process_alive,
    served_over_http,
    wait_until,
)

RULES = {"agents": {agent: {"allow": {"servers": ["*"]}} for agent in ("alpha", "beta")}}


# The isolated fixture's roots, late messages and requests between calls exist on the handshake
# era only: 2026-07-28 has no session to send them on, and asks for input with multi-round-trip
# results instead.
HANDSHAKE = "2025-11-25"


def serve(files: GatewayFiles, **servers: dict[str, Any]) -> None:
    files.write_servers(servers)
    files.write_rules(RULES)


@pytest.fixture
async def isolated(gateway_files: GatewayFiles) -> AsyncIterator[AsgiGateway]:
    """A gateway in front of the isolated fixture in the default (agent) isolation."""
    serve(gateway_files, isolated=fixture_server("isolated", protocol=HANDSHAKE))
    async with asgi_gateway(gateway_files) as service:
        assert await eventually(lambda: service.gateway.ready, 30), "downstream did not start"
        yield service


async def call(client: Client, agent: str, server: str, tool: str, **args: Any) -> Any:
    """execute_tool as `agent`: the tool's structured result (unwrapped), or its text."""
    result = await client.call_tool_mcp(
        "execute_tool", {"agent_id": agent, "server": server, "tool": tool, "args": args}
    )
    assert not result.is_error, result.content
    structured = result.structured_content
    if not structured:
        return result.content[0].text if result.content else None
    return structured["result"] if set(structured) == {"result"} else structured


async def tool_names(client: Client, agent: str, server: str) -> set[str]:
    result = await client.call_tool_mcp("get_server_tools", {"agent_id": agent, "server": server})
    assert not result.is_error and result.structured_content is not None, result.content
    return {tool["name"] for tool in result.structured_content["tools"]}


async def refusal(client: Client, agent: str, server: str, tool: str, **args: Any) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await client.call_tool_mcp(
            "execute_tool", {"agent_id": agent, "server": server, "tool": tool, "args": args}
        )
    return caught.value


class Heard:
    """What one client was sent outside its own requests: log messages, elicitations, samplings."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def handlers(self) -> dict[str, Any]:
        async def on_log(message: Any) -> None:
            self.messages.append(f"log: {message.data}")

        async def elicit(message: str, response_type: Any, params: Any, context: Any) -> dict[str, bool]:
            self.messages.append(f"elicitation: {message}")
            return {"ok": True}

        async def sample(messages: Any, params: Any, context: Any) -> str:
            self.messages.append(f"sampling: {messages[0].content.text}")
            return "sampled"

        return {"log_handler": on_log, "elicitation_handler": elicit, "sampling_handler": sample}

    def about(self, tag: str) -> list[str]:
        return [message for message in self.messages if tag in message]


def pids_of(service: AsgiGateway, server: str) -> dict[str, int | None]:
    """Each of a stdio server's sessions' process id, by owner key ("" for the shared one)."""
    pids: dict[str, int | None] = {}
    for instance in service.gateway.pool.instances(server):
        connection = getattr(instance._wire, "calls", None)
        pids[instance.owner] = connection.pgid if connection is not None else None
    return pids


# --- configuration -------------------------------------------------------------------------------


def test_bad_isolation_settings_are_clear_errors(tmp_path: Any) -> None:
    with pytest.raises(
        SettingsError, match="GATEWAY_ISOLATION='per-call' is not valid: expected 'agent', 'session'"
    ):
        load_settings({"GATEWAY_ISOLATION": "per-call"})
    with pytest.raises(
        SettingsError, match="GATEWAY_MAX_INSTANCES='0' is not valid: expected a positive integer"
    ):
        load_settings({"GATEWAY_MAX_INSTANCES": "0"})
    assert load_settings({"GATEWAY_ISOLATION": "Shared"}).isolation == "shared"
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"s": {"command": "x", "isolation": "per-call"}}}))
    with pytest.raises(ConfigError, match=r"mcpServers\.s\.isolation: .*'agent', 'session' or 'shared'"):
        load_mcp_config(path)
    path.write_text(json.dumps({"mcpServers": {"s": {"command": "x", "idle_timeout": 0}}}))
    with pytest.raises(ConfigError, match=r"mcpServers\.s\.idle_timeout"):
        load_mcp_config(path)


# --- exact routing ----------------------------------------------------------------------------------


async def test_each_agent_gets_its_own_roots_from_server_everything(gateway_files: GatewayFiles) -> None:
    """server-everything asks for roots once per session and keeps them; one shared session
    would give the second agent the first one's roots."""
    serve(gateway_files, everything=everything_server())
    async with (
        asgi_gateway(gateway_files) as service,
        service.client(roots=["file:///work/alpha"]) as alpha,
        service.client(roots=["file:///work/beta"]) as beta,
    ):
        assert await eventually(lambda: service.gateway.ready, 30)
        # The shared session declares no roots, so server-everything does not offer the tool there;
        # an agent's own session does, and once it is up the agent's list is read from it.
        assert "get-roots-list" not in await tool_names(alpha, "alpha", "everything")
        alpha_roots = str(await call(alpha, "alpha", "everything", "get-roots-list"))
        assert "get-roots-list" in await tool_names(alpha, "alpha", "everything")
        beta_roots = str(await call(beta, "beta", "everything", "get-roots-list"))
    assert "file:///work/alpha" in alpha_roots and "file:///work/beta" not in alpha_roots, alpha_roots
    assert "file:///work/beta" in beta_roots and "file:///work/alpha" not in beta_roots, beta_roots


async def test_each_agent_gets_its_own_roots_from_server_everything_over_http(
    gateway_files: GatewayFiles,
) -> None:
    """Over Streamable HTTP each agent has its own MCP session with the server, which asks for
    roots on that session's standalone GET stream (or on a call's stream)."""
    port = free_port()
    command = ["node", str(EVERYTHING), "streamableHttp"]
    environment = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert await asyncio.to_thread(wait_until, lambda: listening(port), 30), (
            "server-everything did not start"
        )
        serve(gateway_files, everything={"description": "everything", "url": f"http://127.0.0.1:{port}/mcp"})
        async with (
            asgi_gateway(gateway_files) as service,
            service.client(roots=["file:///work/alpha"]) as alpha,
            service.client(roots=["file:///work/beta"]) as beta,
        ):
            assert await eventually(lambda: service.gateway.ready, 30)
            alpha_roots = str(await call(alpha, "alpha", "everything", "get-roots-list"))
            beta_roots = str(await call(beta, "beta", "everything", "get-roots-list"))
    finally:
        process.terminate()
        process.wait(10)
    assert "file:///work/alpha" in alpha_roots and "file:///work/beta" not in alpha_roots, alpha_roots
    assert "file:///work/beta" in beta_roots and "file:///work/alpha" not in beta_roots, beta_roots


async def test_a_clients_changed_roots_reach_its_own_downstream_session(gateway_files: GatewayFiles) -> None:
    serve(gateway_files, everything=everything_server())
    alpha_roots = ["file:///work/before"]
    async with (
        asgi_gateway(gateway_files) as service,
        service.client(roots=lambda context: alpha_roots) as alpha,
        service.client(roots=["file:///work/beta"]) as beta,
    ):
        assert "file:///work/before" in str(await call(alpha, "alpha", "everything", "get-roots-list"))
        assert "file:///work/beta" in str(await call(beta, "beta", "everything", "get-roots-list"))
        alpha_roots[:] = ["file:///work/after"]
        await alpha.send_roots_list_changed()
        seen: list[str] = []
        for _ in range(100):  # the server asks again on the notification; poll until it has
            seen.append(str(await call(alpha, "alpha", "everything", "get-roots-list")))
            if "file:///work/after" in seen[-1]:
                break
            await asyncio.sleep(0.1)
        assert "file:///work/after" in seen[-1], seen[-1]
        beta_roots = str(await call(beta, "beta", "everything", "get-roots-list"))
    assert "file:///work/beta" in beta_roots and "file:///work/after" not in beta_roots, beta_roots


async def test_late_messages_reach_their_own_agent_only(isolated: AsgiGateway) -> None:
    """Sent over stdio after alpha's call returned, while beta's call waits: they reach alpha's
    client on its standalone stream, answered there, and never beta's."""
    alpha_heard, beta_heard = Heard(), Heard()
    async with (
        isolated.client(**alpha_heard.handlers()) as alpha,
        isolated.client(**beta_heard.handlers()) as beta,
    ):
        waiting = asyncio.create_task(call(beta, "beta", "isolated", "hold", seconds=3))
        owned = isolated.gateway.pool.owned
        assert await eventually(lambda: owned.get("isolated", {}).get("agent:beta", None) is not None, 30)
        assert await eventually(lambda: owned["isolated"]["agent:beta"].in_flight == 1, 30)
        await late_messages_reach_alpha_only(alpha, alpha_heard, beta_heard)
        assert await waiting == {"timed_out": "yes"}  # beta's own process sent nothing
    assert beta_heard.about("from-alpha") == []


async def test_late_messages_on_an_http_servers_get_stream_reach_their_own_agent_only(
    gateway_files: GatewayFiles,
) -> None:
    """An HTTP server sends them on the standalone GET stream of alpha's own MCP session with it
    (refused before isolation: that stream names no call)."""
    alpha_heard, beta_heard = Heard(), Heard()
    with served_over_http("isolated") as url:
        serve(
            gateway_files, isolated={"description": "isolated over HTTP", "url": url, "protocol": HANDSHAKE}
        )
        async with (
            asgi_gateway(gateway_files) as service,
            service.client(**alpha_heard.handlers()) as alpha,
            service.client(**beta_heard.handlers()) as beta,
        ):
            assert await eventually(lambda: service.gateway.ready, 30)
            await call(beta, "beta", "isolated", "whoami")  # beta has a session of its own too
            await late_messages_reach_alpha_only(alpha, alpha_heard, beta_heard)
    assert beta_heard.about("from-alpha") == []


async def late_messages_reach_alpha_only(alpha: Client, alpha_heard: Heard, beta_heard: Heard) -> None:
    assert await call(alpha, "alpha", "isolated", "late", tag="from-alpha") == "scheduled"
    assert await eventually(lambda: len(alpha_heard.about("from-alpha")) == 3, 30), alpha_heard.messages
    outcomes = await call(alpha, "alpha", "isolated", "hold", seconds=30)
    assert outcomes["elicitation"] == "answered accept", outcomes
    assert outcomes["sampling"].startswith("answered") and "sampled" in outcomes["sampling"], outcomes
    assert beta_heard.about("from-alpha") == []


async def test_a_shared_session_drops_and_counts_what_it_cannot_attribute(
    gateway_files: GatewayFiles,
) -> None:
    """On one session for all agents, a message sent after its call returned names no caller:
    it reaches neither agent (before, it went to whichever call was the only one waiting)."""
    serve(gateway_files, isolated=fixture_server("isolated", isolation="shared", protocol=HANDSHAKE))
    alpha_heard, beta_heard = Heard(), Heard()
    dropped_logs = metric("gateway_downstream_unrouted_total", server="isolated", kind="log")
    dropped_requests = metric("gateway_downstream_unrouted_total", server="isolated", kind="request")
    async with (
        asgi_gateway(gateway_files) as service,
        service.client(**alpha_heard.handlers()) as alpha,
        service.client(**beta_heard.handlers()) as beta,
    ):
        assert await eventually(lambda: service.gateway.ready, 30)
        assert (
            await call(alpha, "alpha", "isolated", "late", tag="from-alpha", after_hold=True) == "scheduled"
        )
        outcomes = await call(beta, "beta", "isolated", "hold", seconds=30)
        assert service.gateway.pool.owned.get("isolated", {}) == {}  # no session beside the shared one
    assert outcomes["elicitation"].startswith("refused"), outcomes
    assert outcomes["sampling"].startswith("refused"), outcomes
    assert alpha_heard.about("from-alpha") == [] and beta_heard.about("from-alpha") == []
    assert metric("gateway_downstream_unrouted_total", server="isolated", kind="log") == dropped_logs + 1
    assert (
        metric("gateway_downstream_unrouted_total", server="isolated", kind="request") == dropped_requests + 2
    )


# --- per-session state ------------------------------------------------------------------------------


async def test_agents_never_see_each_others_state(isolated: AsgiGateway) -> None:
    async with isolated.client() as alpha, isolated.client() as beta:
        assert await call(alpha, "alpha", "isolated", "remember", value="alpha's secret") == "kept"
        assert await call(beta, "beta", "isolated", "recall") == ""
        assert await call(alpha, "alpha", "isolated", "recall") == "alpha's secret"
        assert await call(alpha, "alpha", "isolated", "whoami") != await call(
            beta, "beta", "isolated", "whoami"
        )
    probe = isolated.gateway.pool.get("isolated")
    assert probe is not None and probe.status()["instances"] == 2
    assert metric("gateway_downstream_instances", server="isolated") == 2


async def test_client_sessions_of_one_agent_never_share_state_in_session_mode(
    gateway_files: GatewayFiles,
) -> None:
    serve(gateway_files, isolated=fixture_server("isolated", isolation="session"))
    async with asgi_gateway(gateway_files) as service:
        async with service.client() as first, service.client() as second:
            assert await call(first, "alpha", "isolated", "remember", value="first's") == "kept"
            assert await call(second, "alpha", "isolated", "recall") == ""
            assert await call(first, "alpha", "isolated", "recall") == "first's"
            pids = pids_of(service, "isolated")
            assert len(pids) == 3 and len(set(pids.values())) == 3, pids
        # Both client sessions ended (DELETE): their downstream sessions are closed with them.
        assert await service.gateway.pool.reap() == 2
        assert list(pids_of(service, "isolated")) == [""]
        assert await eventually(
            lambda: not any(process_alive(pid) for key, pid in pids.items() if key and pid)
        )


# --- lifecycle and bounds ---------------------------------------------------------------------------


async def test_idle_instances_are_reaped_and_their_processes_end(gateway_files: GatewayFiles) -> None:
    serve(gateway_files, isolated=fixture_server("isolated", idle_timeout=0.5))
    async with asgi_gateway(gateway_files) as service, service.client() as alpha:
        pid = await call(alpha, "alpha", "isolated", "whoami")
        assert process_alive(pid)
        assert await eventually(lambda: "agent:alpha" not in pids_of(service, "isolated"), 30)
        assert await eventually(lambda: not process_alive(pid), 10), "the reaped process is still running"
        assert metric("gateway_downstream_instances", server="isolated") == 0
        again = await call(alpha, "alpha", "isolated", "whoami")  # started again on its next use
    assert again != pid


async def test_the_instance_cap_refuses_at_once_with_a_clear_reason(gateway_files: GatewayFiles) -> None:
    serve(gateway_files, isolated=fixture_server("isolated", max_instances=1))
    async with asgi_gateway(gateway_files) as service, service.client() as alpha, service.client() as beta:
        await call(alpha, "alpha", "isolated", "whoami")
        refused = await refusal(beta, "beta", "isolated", "whoami")
        assert refused.code == -32001 and refused.data is not None
        assert refused.data["code"] == "SERVER_UNAVAILABLE" and "max_instances" in refused.data["reason"]
        await call(alpha, "alpha", "isolated", "whoami")  # the owner's session is unaffected


async def test_a_crash_restarts_only_that_agents_instance(gateway_files: GatewayFiles) -> None:
    serve(gateway_files, crashing=fixture_server("crashing"))
    async with asgi_gateway(gateway_files) as service, service.client() as alpha, service.client() as beta:
        alpha_pid = await call(alpha, "alpha", "crashing", "pid")
        beta_pid = await call(beta, "beta", "crashing", "pid")
        crashed = await refusal(alpha, "alpha", "crashing", "crash")
        assert crashed.code == -32001

        async def alpha_restarted() -> Any:
            try:
                return await call(alpha, "alpha", "crashing", "pid")
            except MCPError:
                return None

        restarted = None
        for _ in range(100):
            restarted = await alpha_restarted()
            if restarted is not None:
                break
            await asyncio.sleep(0.2)
        assert restarted is not None and restarted != alpha_pid
        assert not process_alive(alpha_pid)
        assert await call(beta, "beta", "crashing", "pid") == beta_pid and process_alive(beta_pid)


async def test_reload_closes_every_instance_of_a_changed_server(gateway_files: GatewayFiles) -> None:
    serve(gateway_files, isolated=fixture_server("isolated"))
    async with asgi_gateway(gateway_files) as service, service.client() as alpha, service.client() as beta:
        await call(alpha, "alpha", "isolated", "whoami")
        await call(beta, "beta", "isolated", "whoami")
        before = pids_of(service, "isolated")
        assert len(before) == 3 and all(before.values())
        serve(gateway_files, isolated=fixture_server("isolated", description="changed"))
        assert await service.gateway.reload("test")
        assert await eventually(lambda: not any(process_alive(pid) for pid in before.values() if pid), 15)
        assert list(pids_of(service, "isolated")) == [""]
        assert await call(alpha, "alpha", "isolated", "whoami") not in before.values()
