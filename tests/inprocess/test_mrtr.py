"""Multi-round-trip requests (MRTR, 2026-07-28) through the gateway, across protocol eras.

A 2026-07-28 client cannot receive a server's requests; a handshake-era server sends them mid-call
(elicitation, sampling, roots). The gateway holds the downstream call, hands the questions back as
an `InputRequiredResult` with a sealed `requestState`, and resumes the call on the client's retry.
Real fixture servers (tests/servers/asking.py) over stdio and HTTP; fastmcp's client and the
SDK's own, in both eras.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as mt
import pytest
from fastmcp import Client
from mcp import Client as SdkClient
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client

from agent_mcp_gateway.settings import SettingsError, load_settings

from conftest import (
    AsgiGateway,
    GatewayFiles,
    StreamingASGITransport,
    answering,
    asgi_gateway,
    eventually,
    fixture_server,
    served_over_http,
)

KEY = "a-secret-shared-by-every-replica-0123456789"
RULES: dict[str, Any] = {
    "agents": {
        "ide": {"view": "aggregate", "allow": {"servers": ["*"]}},
        "other": {"view": "aggregate", "allow": {"servers": ["*"]}},
        "classic": {"allow": {"servers": ["*"]}},
    }
}


HANDSHAKE, MODERN = "2025-11-25", "2026-07-28"


def serve_asking(files: GatewayFiles, era: str, url: str | None = None) -> GatewayFiles:
    """The asking fixture, which the gateway speaks to in `era`: over HTTP at `url`, else stdio."""
    server = {"url": url, "prefix": "as"} if url else fixture_server("asking", prefix="as")
    files.write_servers({"asking": {**server, "protocol": era}})
    files.write_rules(RULES)
    return files


@pytest.fixture(
    params=[("stdio", HANDSHAKE), ("http", HANDSHAKE), ("stdio", MODERN), ("http", MODERN)],
    ids=["stdio-handshake", "http-handshake", "stdio-2026", "http-2026"],
)
def asking(request: pytest.FixtureRequest, gateway_files: GatewayFiles) -> Iterator[GatewayFiles]:
    """The asking fixture in either era, over stdio or HTTP."""
    transport, era = request.param
    if transport == "stdio":
        yield serve_asking(gateway_files, era)
        return
    with served_over_http("asking") as url:
        yield serve_asking(gateway_files, era, url)


@pytest.fixture
def asking_stdio(gateway_files: GatewayFiles) -> GatewayFiles:
    """A handshake-era server: its questions are requests, so the gateway holds its calls."""
    return serve_asking(gateway_files, HANDSHAKE)


@pytest.fixture
def modern_stdio(gateway_files: GatewayFiles) -> GatewayFiles:
    """A 2026-07-28 server: its questions are results, passed through with its state."""
    return serve_asking(gateway_files, MODERN)


def as_agent(agent: str) -> dict[str, str]:
    return {"X-Agent-Id": agent}


def text(result: mt.CallToolResult | Any) -> str:
    content = result.content
    assert len(content) == 1 and isinstance(content[0], mt.TextContent), content
    return content[0].text


async def first_round(client: Client) -> mt.InputRequiredResult:
    """The first round of a call, driven by hand: the server's questions, not its result."""
    result = await client.session.call_tool("as__colour", {}, allow_input_required=True)
    assert isinstance(result, mt.InputRequiredResult), result
    assert result.request_state is not None
    return result


ASKABLE = answering("blue", [], "circle")  # a client that declares elicitation, sampling and roots
# The gateway names the questions it relays: the first elicitation of a call is elicitation-1.
BLUE: dict[str, Any] = {"elicitation-1": mt.ElicitResult(action="accept", content={"colour": "blue"})}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_each_era_of_client_answers_each_era_of_server(asking: GatewayFiles, mode: str) -> None:
    """One question, two at once, three in a row, in all four pairings of client era and server
    era: a 2026-07-28 client answers them round by round, a handshake-era client as requests on
    its call's stream, whichever way the server asks; the outcome is the same."""
    calls: list[str] = []
    async with (
        asgi_gateway(asking) as service,
        service.client(mode, headers=as_agent("ide"), **answering("blue", calls, "circle")) as ide,
    ):
        assert text(await ide.call_tool("as__colour", {})) == "colour blue"
        assert text(await ide.call_tool("as__pair", {})) == "blue circle"
        assert text(await ide.call_tool("as__interview", {"topic": "t"})) == "t: blue | circle | file:///blue"
        assert len(service.gateway.held) == 0
    assert calls == ["elicitation", "elicitation", "sampling", "elicitation", "sampling", "roots"]


@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
async def test_the_discovery_view_relays_questions_the_same_way(
    gateway_files: GatewayFiles, era: str
) -> None:
    calls: list[str] = []
    async with (
        asgi_gateway(serve_asking(gateway_files, era)) as service,
        service.client("auto", headers=as_agent("classic"), **answering("green", calls, "circle")) as classic,
    ):
        result = await classic.call_tool(
            "execute_tool", {"server": "asking", "tool": "interview", "args": {"topic": "x"}}
        )
        assert "x: green | circle | file:///green" in str(result.content)
    assert calls == ["elicitation", "sampling", "roots"]


@asynccontextmanager
async def sdk_client(service: AsgiGateway, mode: str, agent: str) -> AsyncIterator[SdkClient]:
    """The official SDK's client, over Streamable HTTP in process."""

    async def elicit(context: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        return mt.ElicitResult(action="accept", content={"colour": "teal"})

    async def sample(context: Any, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        return mt.CreateMessageResult(
            role="assistant", content=mt.TextContent(type="text", text="square"), model="m"
        )

    async def roots(context: Any) -> mt.ListRootsResult:
        return mt.ListRootsResult(roots=[mt.Root(uri="file:///teal")])

    http = httpx2.AsyncClient(
        transport=StreamingASGITransport(service.app), headers=as_agent(agent), timeout=30
    )
    async with (
        http,
        SdkClient(
            streamable_http_client(service.mcp_url, http_client=http),
            mode=mode,  # type: ignore[arg-type]
            elicitation_callback=elicit,
            sampling_callback=sample,
            list_roots_callback=roots,
        ) as client,
    ):
        yield client


@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sdk_client_answers_each_era_of_server(
    gateway_files: GatewayFiles, mode: str, era: str
) -> None:
    async with (
        asgi_gateway(serve_asking(gateway_files, era)) as service,
        sdk_client(service, mode, "ide") as ide,
    ):
        assert text(await ide.call_tool("as__colour", {})) == "colour teal"
        assert text(await ide.call_tool("as__pair", {})) == "teal square"
        assert text(await ide.call_tool("as__interview", {"topic": "t"})) == "t: teal | square | file:///teal"


async def test_a_tampered_request_state_is_refused(asking_stdio: GatewayFiles) -> None:
    """The state is sealed: a changed byte, or the state of another call's arguments, is refused
    before the gateway reads it; the untouched state still resumes the call it names."""
    async with (
        asgi_gateway(asking_stdio, GATEWAY_REQUEST_STATE_KEYS=KEY) as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
    ):
        asked = await first_round(ide)
        assert asked.input_requests is not None and set(asked.input_requests) == {"elicitation-1"}
        state = asked.request_state
        assert state is not None and "agent" not in state  # sealed, not readable
        flipped = state[:-3] + ("A" if state[-3] != "A" else "B") + state[-2:]
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await ide.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=flipped)
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await ide.session.call_tool("as__pair", {}, input_responses=BLUE, request_state=state)
        result = await ide.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        assert text(result) == "colour blue"
        assert len(service.gateway.held) == 0


async def test_another_agents_retry_is_refused(asking_stdio: GatewayFiles) -> None:
    """What the held call's server waits on belongs to the agent that made the call."""
    async with (
        asgi_gateway(asking_stdio) as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
        service.client("auto", headers=as_agent("other"), **ASKABLE) as other,
    ):
        state = (await first_round(ide)).request_state
        with pytest.raises(MCPError, match="another agent's call"):
            await other.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        result = await ide.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        assert text(result) == "colour blue"


async def test_a_retry_on_a_replica_without_the_call_is_told_where_it_is(asking_stdio: GatewayFiles) -> None:
    """Replicas sharing the keys accept each other's state; one that does not hold the call says
    which replica does. A replica with other keys cannot open the state at all."""
    async with (
        asgi_gateway(asking_stdio, GATEWAY_REQUEST_STATE_KEYS=KEY) as first,
        asgi_gateway(asking_stdio, GATEWAY_REQUEST_STATE_KEYS=KEY) as second,
        asgi_gateway(asking_stdio, GATEWAY_REQUEST_STATE_KEYS="x" * 40) as stranger,
        first.client("auto", headers=as_agent("ide"), **ASKABLE) as on_first,
        second.client("auto", headers=as_agent("ide"), **ASKABLE) as on_second,
        stranger.client("auto", headers=as_agent("ide"), **ASKABLE) as on_stranger,
    ):
        first.gateway.held.replica, second.gateway.held.replica = "replica-a", "replica-b"
        state = (await first_round(on_first)).request_state
        with pytest.raises(MCPError, match="held by gateway replica 'replica-a', not by 'replica-b'"):
            await on_second.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await on_stranger.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        result = await on_first.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        assert text(result) == "colour blue"


async def test_a_call_waits_for_its_retry_only_so_long(asking_stdio: GatewayFiles) -> None:
    async with (
        asgi_gateway(asking_stdio, GATEWAY_INPUT_WAIT="0.5") as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
    ):
        state = (await first_round(ide)).request_state
        await eventually(lambda: len(service.gateway.held) == 0)
        with pytest.raises(MCPError, match=r"expired|waited too long"):
            await ide.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)


async def test_held_calls_are_bounded(asking_stdio: GatewayFiles) -> None:
    async with (
        asgi_gateway(asking_stdio, GATEWAY_MAX_HELD_CALLS="1") as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
        service.client("auto", headers=as_agent("other"), **ASKABLE) as other,
    ):
        state = (await first_round(ide)).request_state
        with pytest.raises(MCPError, match="already holds 1 calls"):
            await first_round(other)
        result = await ide.session.call_tool("as__colour", {}, input_responses=BLUE, request_state=state)
        assert text(result) == "colour blue"
        assert len(service.gateway.held) == 0


def test_a_short_key_is_refused_without_being_echoed() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_REQUEST_STATE_KEYS='\\*\\*\\*' is not valid") as refused:
        load_settings({"GATEWAY_REQUEST_STATE_KEYS": f"{KEY},short-secret"})
    assert "short-secret" not in str(refused.value)
    assert len(load_settings({"GATEWAY_REQUEST_STATE_KEYS": f"{KEY}, {KEY[::-1]}"}).request_state_keys) == 2


async def test_a_2026_servers_questions_pass_through_and_its_state_is_bound_to_the_agent(
    modern_stdio: GatewayFiles,
) -> None:
    """A 2026-07-28 server's InputRequiredResult reaches the client as the server wrote it (its
    own keys) and nothing is held; its requestState travels inside the gateway's sealed one, so
    it is refused when tampered with or replayed by another agent, and the untouched retry
    reaches the server that minted it (the fixture seals under a key of its own process, so a
    retry reaching another instance would be refused there)."""
    async with (
        asgi_gateway(modern_stdio, GATEWAY_REQUEST_STATE_KEYS=KEY) as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
        service.client("auto", headers=as_agent("other"), **ASKABLE) as other,
    ):
        asked = await first_round(ide)
        assert asked.input_requests is not None and set(asked.input_requests) == {"c"}
        assert len(service.gateway.held) == 0
        state = asked.request_state
        assert state is not None
        answers: dict[str, Any] = {"c": mt.ElicitResult(action="accept", content={"colour": "red"})}
        flipped = state[:-3] + ("A" if state[-3] != "A" else "B") + state[-2:]
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await ide.session.call_tool("as__colour", {}, input_responses=answers, request_state=flipped)
        with pytest.raises(MCPError, match="another agent's call"):
            await other.session.call_tool("as__colour", {}, input_responses=answers, request_state=state)
        result = await ide.session.call_tool("as__colour", {}, input_responses=answers, request_state=state)
        assert text(result) == "colour red"
