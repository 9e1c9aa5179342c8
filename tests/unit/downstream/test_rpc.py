"""The JSON-RPC framing every transport's calls go through (downstream/rpc.py), without a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from mcp import MCPError

from agent_mcp_gateway.downstream import rpc
from agent_mcp_gateway.protocol import METHOD_NOT_FOUND


@dataclass
class Recorded:
    """A call's messages as `CallMessages` receives them."""

    wants_progress: bool = False
    progressed: list[dict[str, Any]] = field(default_factory=list)
    notified: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    reply: dict[str, Any] | MCPError = field(default_factory=dict)
    asked: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    async def progress(self, params: dict[str, Any]) -> None:
        self.progressed.append(params)

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        self.notified.append((method, params))

    async def answer(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        self.asked.append((method, params))
        if isinstance(self.reply, MCPError):
            raise self.reply
        return self.reply


def test_ids_are_strings_and_never_repeat() -> None:
    ids = [rpc.new_id() for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(isinstance(i, str) and i.startswith("gw-") for i in ids)


def test_a_request_carries_no_progress_token_unless_the_caller_wants_progress() -> None:
    params = {"name": "echo", "arguments": {"text": "hi"}}
    assert rpc.request("gw-1", "tools/call", params, Recorded()) == {
        "jsonrpc": "2.0",
        "id": "gw-1",
        "method": "tools/call",
        "params": params,
    }


def test_a_progress_token_is_the_request_id_and_keeps_the_callers_meta() -> None:
    params = {"name": "echo", "_meta": {"traceparent": "00-abc"}}
    message = rpc.request("gw-2", "tools/call", params, Recorded(wants_progress=True))
    assert message["params"]["_meta"] == {"traceparent": "00-abc", "progressToken": "gw-2"}
    assert params == {"name": "echo", "_meta": {"traceparent": "00-abc"}}  # the caller's is not changed


def test_cancelled_names_the_request_and_the_reason() -> None:
    assert rpc.cancelled("gw-3", "the caller gave up") == {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": "gw-3", "reason": "the caller gave up"},
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"jsonrpc": "2.0", "id": "gw-4", "result": {}}, True),
        ({"jsonrpc": "2.0", "id": "gw-4", "error": {"code": -1, "message": "no"}}, True),
        ({"jsonrpc": "2.0", "id": "gw-5", "result": {}}, False),  # another call's answer
        ({"jsonrpc": "2.0", "id": 4, "result": {}}, False),  # the SDK session's integer ids
        ({"jsonrpc": "2.0", "id": "gw-4", "method": "ping"}, False),  # a request of the server's
        ({"jsonrpc": "2.0", "id": "gw-4", "method": "x", "result": {}}, False),
        ({"jsonrpc": "2.0", "id": "gw-4"}, False),  # neither result nor error
        (["gw-4"], False),
        (None, False),
    ],
)
def test_is_answer(message: object, expected: bool) -> None:
    assert rpc.is_answer(message, "gw-4") is expected


def test_outcome_is_the_result_object() -> None:
    assert rpc.outcome({"id": "gw-1", "result": {"content": []}}) == {"content": []}


@pytest.mark.parametrize("result", [None, [], "text", 3])
def test_a_result_that_is_not_an_object_is_an_internal_error(result: object) -> None:
    with pytest.raises(MCPError) as raised:
        rpc.outcome({"id": "gw-1", "result": result})
    assert raised.value.code == rpc.INTERNAL_ERROR


def test_an_error_answer_is_raised_as_the_sdk_raises_it() -> None:
    with pytest.raises(MCPError) as raised:
        rpc.outcome({"id": "gw-1", "error": {"code": -32602, "message": "bad", "data": {"field": "x"}}})
    assert (raised.value.code, raised.value.message, raised.value.data) == (-32602, "bad", {"field": "x"})


@pytest.mark.parametrize("error", ["just text", {"code": "7", "message": 5}, {}])
def test_a_malformed_error_is_still_an_error(error: object) -> None:
    with pytest.raises(MCPError) as raised:
        rpc.outcome({"id": "gw-1", "error": error})
    assert raised.value.code == rpc.INTERNAL_ERROR


async def test_a_server_request_is_answered_with_the_clients_result() -> None:
    messages = Recorded(reply={"action": "accept"})
    request = {"jsonrpc": "2.0", "id": 9, "method": "elicitation/create", "params": {"message": "?"}}
    assert await rpc.answer_server_request(request, messages) == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {"action": "accept"},
    }
    assert messages.asked == [("elicitation/create", {"message": "?"})]


async def test_a_server_request_the_client_refuses_is_answered_with_its_error() -> None:
    messages = Recorded(reply=MCPError(METHOD_NOT_FOUND, "no roots", {"why": "none"}))
    answer = await rpc.answer_server_request({"id": "s1", "method": "roots/list", "params": []}, messages)
    assert answer == {
        "jsonrpc": "2.0",
        "id": "s1",
        "error": {"code": METHOD_NOT_FOUND, "message": "no roots", "data": {"why": "none"}},
    }
    assert messages.asked == [("roots/list", None)]  # params that are not an object are not passed


async def test_an_error_without_data_has_no_data_field() -> None:
    messages = Recorded(reply=MCPError(-1, "no"))
    answer = await rpc.answer_server_request({"id": 1, "method": "sampling/createMessage"}, messages)
    assert answer["error"] == {"code": -1, "message": "no"}


async def test_progress_reaches_only_the_call_it_belongs_to() -> None:
    messages = Recorded()
    mine = {"progressToken": "gw-7", "progress": 1, "total": 2}
    await rpc.route({"method": "notifications/progress", "params": mine}, "gw-7", messages)
    await rpc.route(
        {"method": "notifications/progress", "params": {"progressToken": "gw-8", "progress": 1}},
        "gw-7",
        messages,
    )
    await rpc.route(
        {"method": "notifications/progress", "params": {"progressToken": "gw-7"}}, "gw-7", messages
    )
    await rpc.route({"method": "notifications/progress", "params": "junk"}, "gw-7", messages)
    assert messages.progressed == [mine]
    assert messages.notified == []  # progress is never passed on as another notification


async def test_other_notifications_are_passed_on() -> None:
    messages = Recorded()
    log = {"level": "info", "data": "hi"}
    await rpc.route({"method": "notifications/message", "params": log}, "gw-7", messages)
    await rpc.route({"method": "notifications/tools/list_changed"}, "gw-7", messages)
    await rpc.route({"method": "notifications/message", "params": ["x"]}, "gw-7", messages)
    assert messages.notified == [
        ("notifications/message", log),
        ("notifications/tools/list_changed", None),
        ("notifications/message", None),
    ]
