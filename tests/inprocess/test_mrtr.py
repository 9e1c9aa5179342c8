"""Multi-round-trip requests (MRTR, 2026-07-28) through the gateway, across protocol eras.

A 2026-07-28 client cannot receive a server's requests; a handshake-era server sends them mid-call
(elicitation, sampling, roots). The gateway holds the downstream call, hands the questions back as
an `InputRequiredResult` with a sealed `requestState`, and resumes the call on the client's retry.
Real fixture servers (tests/servers/asking.py) over stdio and HTTP; fastmcp's client and the
SDK's own, in both eras.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
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


def answering(colour: str, calls: list[str]) -> dict[str, Any]:
    """fastmcp client handlers that answer elicitation, sampling and roots, recording each."""

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> dict[str, str]:
        calls.append("elicitation")
        return {"colour": colour}

    async def sample(messages: Any, params: Any, context: Any) -> str:
        calls.append("sampling")
        return "circle"

    def roots(context: Any) -> list[str]:
        calls.append("roots")
        return [f"file:///{colour}"]

    return {"elicitation_handler": elicit, "sampling_handler": sample, "roots": roots}


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


ASKABLE = answering("blue", [])  # a client that declares elicitation, sampling and roots
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
        service.client(mode, headers=as_agent("ide"), **answering("blue", calls)) as ide,
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
        service.client("auto", headers=as_agent("classic"), **answering("green", calls)) as classic,
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


# --- prompts/get and resources/read: multi-round-trip requests as well -------------------------

BRIEF = "Brief on t: blue | circle | file:///blue"
PROFILE = "profile: file:///blue | circle"
INVALID = "Invalid or expired requestState"


def replies(asked: mt.InputRequiredResult) -> dict[str, Any]:
    """A 2026-07-28 client's answers to one round's questions, whatever their keys."""
    answers: dict[str, Any] = {}
    for key, request in (asked.input_requests or {}).items():
        if isinstance(request, mt.ElicitRequest):
            answers[key] = mt.ElicitResult(action="accept", content={"colour": "blue"})
        elif isinstance(request, mt.CreateMessageRequest):
            content = mt.TextContent(type="text", text="circle")
            answers[key] = mt.CreateMessageResult(role="assistant", content=content, model="m")
        else:
            answers[key] = mt.ListRootsResult(roots=[mt.Root(uri="file:///blue")])
    return answers


async def by_hand(asked: Any, retry: Callable[[dict[str, Any], str | None], Awaitable[Any]]) -> Any:
    """Answer round after round, as a 2026-07-28 client driving its own loop, until the result."""
    rounds = 0
    while isinstance(asked, mt.InputRequiredResult):
        rounds += 1
        assert rounds <= 5, "the rounds never end"
        asked = await retry(replies(asked), asked.request_state)
    return asked


def prompt_text(result: mt.GetPromptResult | Any) -> str:
    assert len(result.messages) == 1 and isinstance(result.messages[0].content, mt.TextContent), result
    return result.messages[0].content.text


def read_text(contents: Sequence[Any]) -> str:
    assert len(contents) == 1 and isinstance(contents[0], mt.TextResourceContents), contents
    return contents[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_prompts_and_reads_that_ask_are_answered_in_each_pairing(
    asking: GatewayFiles, mode: str
) -> None:
    """A prompt that asks three things in a row and a resource that asks two, in all four
    pairings of client era and server era, over stdio and HTTP: the client answers each as it
    answers a tool's questions (rounds or requests on its call's stream), and gets the prompt and
    the contents the server wrote from those answers."""
    calls: list[str] = []
    async with (
        asgi_gateway(asking) as service,
        service.client(mode, headers=as_agent("ide"), **answering("blue", calls)) as ide,
    ):
        assert prompt_text(await ide.get_prompt("as__briefing", {"topic": "t"})) == BRIEF
        assert read_text(await ide.read_resource("asking://profile")) == PROFILE
        assert len(service.gateway.held) == 0
    assert calls == ["elicitation", "sampling", "roots", "roots", "sampling"]


@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sdk_client_gets_prompts_and_reads_that_ask(
    gateway_files: GatewayFiles, mode: str, era: str
) -> None:
    async with (
        asgi_gateway(serve_asking(gateway_files, era)) as service,
        sdk_client(service, mode, "ide") as ide,
    ):
        prompt = await ide.get_prompt("as__briefing", {"topic": "t"})
        assert prompt_text(prompt) == "Brief on t: teal | square | file:///teal"
        assert (
            read_text((await ide.read_resource("asking://profile")).contents)
            == "profile: file:///teal | square"
        )


@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
async def test_a_request_state_is_bound_to_its_method_target_arguments_and_agent(
    gateway_files: GatewayFiles, era: str
) -> None:
    """The state of a prompt's round cannot be replayed on the prompt with other arguments, on a
    tool call or on a resource read, nor a read's on another URI or on the prompt, nor by another
    agent; the untouched state goes on to the result (a held call of a handshake-era server, or
    a 2026-07-28 server's own state passed through)."""
    async with (
        asgi_gateway(serve_asking(gateway_files, era), GATEWAY_REQUEST_STATE_KEYS=KEY) as service,
        service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
        service.client("auto", headers=as_agent("other"), **ASKABLE) as other,
    ):
        session, topic = ide.session, {"topic": "t"}

        async def prompt_round(answers: dict[str, Any] | None, state: str | None) -> Any:
            return await session.get_prompt(
                "as__briefing", topic, input_responses=answers, request_state=state, allow_input_required=True
            )

        async def read_round(answers: dict[str, Any] | None, state: str | None) -> Any:
            return await session.read_resource(
                "asking://profile", input_responses=answers, request_state=state, allow_input_required=True
            )

        asked = await prompt_round(None, None)
        assert isinstance(asked, mt.InputRequiredResult) and asked.request_state is not None
        answers, state = replies(asked), asked.request_state
        with pytest.raises(MCPError, match=INVALID):
            await session.get_prompt(
                "as__briefing", {"topic": "u"}, input_responses=answers, request_state=state
            )
        with pytest.raises(MCPError, match=INVALID):
            await session.call_tool("as__interview", topic, input_responses=answers, request_state=state)
        with pytest.raises(MCPError, match=INVALID):
            await session.read_resource("asking://profile", input_responses=answers, request_state=state)
        with pytest.raises(MCPError, match="another agent's call"):
            await other.session.get_prompt(
                "as__briefing", topic, input_responses=answers, request_state=state
            )
        assert prompt_text(await by_hand(asked, prompt_round)) == BRIEF

        asked = await read_round(None, None)
        assert isinstance(asked, mt.InputRequiredResult) and asked.request_state is not None
        answers, state = replies(asked), asked.request_state
        with pytest.raises(MCPError, match=INVALID):
            await session.read_resource("asking://elsewhere", input_responses=answers, request_state=state)
        with pytest.raises(MCPError, match=INVALID):
            await session.get_prompt("as__briefing", topic, input_responses=answers, request_state=state)
        with pytest.raises(MCPError, match="another agent's call"):
            await other.session.read_resource(
                "asking://profile", input_responses=answers, request_state=state
            )
        assert read_text((await by_hand(asked, read_round)).contents) == PROFILE
        assert len(service.gateway.held) == 0


@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
async def test_policy_and_audit_apply_to_every_round_of_a_prompt_and_a_read(
    gateway_files: GatewayFiles, era: str
) -> None:
    """Each round is an operation of its own: audited, and decided under the rules current then,
    so a retry after the agent lost the server is refused whatever its state says. Over HTTP, so
    the prompt and the read can wait for their retries at once."""
    with served_over_http("asking") as url:
        files = serve_asking(gateway_files, era, url)
        async with (
            asgi_gateway(files) as service,
            service.client("auto", headers=as_agent("ide"), **ASKABLE) as ide,
        ):
            session, topic = ide.session, {"topic": "t"}
            prompt = await session.get_prompt("as__briefing", topic, allow_input_required=True)
            read = await session.read_resource("asking://profile", allow_input_required=True)
            assert isinstance(prompt, mt.InputRequiredResult) and isinstance(read, mt.InputRequiredResult)
            prompt = await session.get_prompt(
                "as__briefing",
                topic,
                input_responses=replies(prompt),
                request_state=prompt.request_state,
                allow_input_required=True,
            )
            assert isinstance(prompt, mt.InputRequiredResult)

            def rounds() -> list[tuple[str, str, str, str | None]]:
                return [
                    (line["operation"], line["server"], line["tool"], line["decision"])
                    for line in files.audit_lines()
                    if line["agent_id"] == "ide" and line["operation"] in ("prompts/get", "resources/read")
                ]

            allowed = [
                ("prompts/get", "asking", "briefing", "ALLOW"),
                ("resources/read", "asking", "asking://profile", "ALLOW"),
                ("prompts/get", "asking", "briefing", "ALLOW"),
            ]
            await eventually(lambda: len(rounds()) >= 3)
            assert rounds() == allowed

            files.write_rules(
                {"agents": {**RULES["agents"], "ide": {"view": "aggregate", "deny": {"servers": ["*"]}}}}
            )
            assert await service.gateway.reload("test")
            with pytest.raises(MCPError, match="Unknown prompt"):
                await session.get_prompt(
                    "as__briefing", topic, input_responses=replies(prompt), request_state=prompt.request_state
                )
            with pytest.raises(MCPError, match="Resource not found"):
                await session.read_resource(
                    "asking://profile", input_responses=replies(read), request_state=read.request_state
                )
            await eventually(lambda: len(rounds()) >= 5)
            refused = rounds()[3:]
            assert [(operation, decision) for operation, _, _, decision in refused] == [
                ("prompts/get", "ERROR"),
                ("resources/read", "ERROR"),
            ], refused
