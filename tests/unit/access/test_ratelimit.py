"""The in-memory moving window (access/ratelimit.py `MovingWindow`) on a clock the test moves."""

from __future__ import annotations

import types

import pytest

from agent_mcp_gateway.access import ratelimit
from agent_mcp_gateway.access.ratelimit import MovingWindow
from agent_mcp_gateway.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The module's `time`, with a monotonic clock of the test's (the rest of `time` as it is)."""
    clock = Clock()
    fake = types.SimpleNamespace(monotonic=clock.monotonic, time=ratelimit.time.time)
    monkeypatch.setattr(ratelimit, "time", fake)
    return clock


def charges_allowed(window: MovingWindow, agent: str, limit: str, attempts: int) -> int:
    allowed = 0
    for _ in range(attempts):
        try:
            window.charge(agent, limit)
        except RateLimited:
            continue
        allowed += 1
    return allowed


def test_the_limits_amount_is_allowed_and_the_next_is_refused(clock: Clock) -> None:
    window = MovingWindow()
    assert charges_allowed(window, "a", "3/minute", 3) == 3
    with pytest.raises(RateLimited) as refused:
        window.charge("a", "3/minute")
    assert refused.value.data == {
        "code": "RATE_LIMITED",
        "agent_id": "a",
        "limit": "3/minute",
        "retry_after": 60,
    }


def test_the_window_moves_each_charge_expires_one_period_after_it(clock: Clock) -> None:
    window = MovingWindow()
    window.charge("a", "2/minute")  # t=0
    clock.now += 30
    window.charge("a", "2/minute")  # t=30
    with pytest.raises(RateLimited):
        window.charge("a", "2/minute")
    clock.now += 30  # t=60: the first charge is exactly one period old and still counts
    with pytest.raises(RateLimited):
        window.charge("a", "2/minute")
    clock.now += 0.001  # just past it: one slot is free, the second charge still holds the other
    window.charge("a", "2/minute")
    with pytest.raises(RateLimited):
        window.charge("a", "2/minute")


def test_retry_after_is_when_the_oldest_charge_leaves_the_window(clock: Clock) -> None:
    window = MovingWindow()
    window.charge("a", "1/minute")
    clock.now += 20.5
    with pytest.raises(RateLimited) as refused:
        window.charge("a", "1/minute")
    assert refused.value.data["retry_after"] == 40  # ceil(60 - 20.5)
    clock.now += 39.4  # t=59.9
    with pytest.raises(RateLimited) as refused:
        window.charge("a", "1/minute")
    assert refused.value.data["retry_after"] == 1  # never 0


def test_refused_charges_are_not_counted(clock: Clock) -> None:
    window = MovingWindow()
    window.charge("a", "1/second")
    for _ in range(50):
        with pytest.raises(RateLimited):
            window.charge("a", "1/second")
    clock.now += 1.001
    window.charge("a", "1/second")  # the refusals did not keep the window full


def test_agents_and_limits_are_counted_apart(clock: Clock) -> None:
    window = MovingWindow()
    window.charge("a", "1/minute")
    window.charge("b", "1/minute")  # another agent has its own window
    window.charge("a", "5/hour")  # another limit of the same agent too
    with pytest.raises(RateLimited):
        window.charge("a", "1/minute")


def test_every_limit_of_a_list_holds(clock: Clock) -> None:
    window = MovingWindow()
    limits = "2/second;3/minute"
    window.charge("a", limits)
    window.charge("a", limits)
    with pytest.raises(RateLimited):  # the per-second limit
        window.charge("a", limits)
    clock.now += 1.5
    window.charge("a", limits)
    clock.now += 1.5
    with pytest.raises(RateLimited) as refused:  # the per-minute limit, though a second has passed
        window.charge("a", limits)
    assert refused.value.data["retry_after"] == 57


def test_a_long_quiet_period_empties_the_window(clock: Clock) -> None:
    window = MovingWindow()
    assert charges_allowed(window, "a", "10/minute", 15) == 10
    clock.now += 3600
    assert charges_allowed(window, "a", "10/minute", 15) == 10
