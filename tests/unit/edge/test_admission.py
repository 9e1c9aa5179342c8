"""The Origin check (edge/admission.py `OriginGuard`) on its own, around a stub app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent_mcp_gateway.edge.admission import OriginGuard


async def reached(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def guard(allowed: list[str], local_bind: bool) -> OriginGuard:
    return OriginGuard(reached, allowed, local_bind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:8080", True),
        ("HTTP://LOCALHOST", True),
        ("http://evil.example", False),
        ("http://localhost.evil.example", False),
        ("file://localhost", False),  # not a web origin
        ("null", False),
    ],
)
def test_a_loopback_bind_without_a_list_allows_loopback_origins_only(origin: str, expected: bool) -> None:
    assert guard([], local_bind=True).allows(origin) is expected


def test_a_configured_list_is_exact_and_replaces_the_loopback_default() -> None:
    listed = guard(["https://app.example/", "HTTP://Other.Example"], local_bind=True)
    assert listed.allows("https://app.example")
    assert listed.allows("https://APP.example/")
    assert listed.allows("http://other.example")
    assert not listed.allows("https://app.example:8443")
    assert not listed.allows("http://app.example")
    assert not listed.allows("http://localhost")  # a list is the whole list


def test_a_wildcard_allows_any_origin_and_an_open_bind_none_by_default() -> None:
    assert guard(["*"], local_bind=False).allows("http://anything.example")
    assert not guard([], local_bind=False).allows("http://localhost")


async def test_a_refused_origin_gets_403_and_no_origin_passes() -> None:
    app = guard([], local_bind=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        refused = await http.post("/mcp", headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403
        assert refused.json()["error"]["data"]["code"] == "ORIGIN_NOT_ALLOWED"
        assert (await http.post("/mcp", headers={"Origin": "http://localhost:5173"})).status_code == 204
        assert (await http.post("/mcp")).status_code == 204  # not a browser: nothing to check
