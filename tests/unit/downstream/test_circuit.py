"""The circuit breaker as the pure state machine it is: a clock the test moves, no sleeps."""

from __future__ import annotations

import pytest

from agent_mcp_gateway.downstream.circuit import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, changes: list[bool] | None = None, **options: float) -> CircuitBreaker:
    on_change = changes.append if changes is not None else None
    return CircuitBreaker(clock=clock, on_change=on_change, **options)  # type: ignore[arg-type]


def fail(circuit: CircuitBreaker, times: int, reason: str = "boom") -> None:
    for _ in range(times):
        circuit.record_failure(reason)


def test_stays_closed_below_the_threshold(clock: Clock) -> None:
    circuit = breaker(clock, threshold=3)
    fail(circuit, 2)
    assert circuit.state == "closed"
    assert circuit.admit() is False  # an ordinary call, not a trial
    assert circuit.status() == {"state": "closed", "consecutive_failures": 2}


def test_a_success_resets_the_count_of_consecutive_failures(clock: Clock) -> None:
    circuit = breaker(clock, threshold=3)
    fail(circuit, 2)
    circuit.record_success()
    fail(circuit, 2)
    assert circuit.state == "closed" and circuit.failures == 2


def test_opens_at_the_threshold_and_refuses_naming_why_and_when(clock: Clock) -> None:
    changes: list[bool] = []
    circuit = breaker(clock, changes, threshold=3, cooldown=2.0)
    fail(circuit, 3, "call timed out")
    assert circuit.state == "open"
    assert changes == [True]
    with pytest.raises(CircuitOpen) as refused:
        circuit.admit()
    message = str(refused.value)
    assert "after 3 consecutive failures" in message
    assert "call timed out" in message
    assert "next probe in 2.0 s" in message
    assert circuit.status() == {
        "state": "open",
        "consecutive_failures": 3,
        "last_failure": "call timed out",
        "retry_in_seconds": 2.0,
    }


def test_after_the_cooldown_exactly_one_trial_is_let_through(clock: Clock) -> None:
    circuit = breaker(clock, threshold=1, cooldown=2.0)
    fail(circuit, 1)
    clock.now += 1.999
    assert circuit.state == "open"
    with pytest.raises(CircuitOpen):
        circuit.admit()
    clock.now += 0.001
    assert circuit.state == "half_open"
    assert circuit.admit() is True  # the trial
    with pytest.raises(CircuitOpen, match="a trial call is in flight"):
        circuit.admit()


def test_a_successful_trial_closes_the_circuit(clock: Clock) -> None:
    changes: list[bool] = []
    circuit = breaker(clock, changes, threshold=1, cooldown=2.0)
    fail(circuit, 1)
    clock.now += 2
    assert circuit.admit() is True
    circuit.record_success()
    assert circuit.state == "closed"
    assert changes == [True, False]
    assert circuit.admit() is False
    assert circuit.status() == {"state": "closed", "consecutive_failures": 0}


def test_a_failed_trial_opens_it_again_with_a_doubled_cooldown_up_to_the_cap(clock: Clock) -> None:
    changes: list[bool] = []
    circuit = breaker(clock, changes, threshold=2, cooldown=2.0, max_cooldown=10.0)
    fail(circuit, 2)
    waits = []
    for _ in range(5):
        waits.append(circuit.status()["retry_in_seconds"])
        clock.now += waits[-1]
        assert circuit.admit() is True
        circuit.record_failure("still down")  # one failure is enough once it has tripped
        assert circuit.state == "open"
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert changes == [True]  # open all along: one change reported, not one per trip


def test_a_success_resets_the_cooldown_doubling(clock: Clock) -> None:
    circuit = breaker(clock, threshold=1, cooldown=2.0)
    fail(circuit, 1)
    clock.now += 2
    circuit.admit()
    fail(circuit, 1)  # second trip: 4 s
    assert circuit.status()["retry_in_seconds"] == 4.0
    circuit.record_success()
    fail(circuit, 1)  # a fresh first trip: 2 s again
    assert circuit.status()["retry_in_seconds"] == 2.0


def test_a_released_trial_lets_the_next_call_be_the_trial(clock: Clock) -> None:
    circuit = breaker(clock, threshold=1, cooldown=1.0)
    fail(circuit, 1)
    clock.now += 1
    assert circuit.admit() is True
    circuit.release(trial=True)  # e.g. an unknown tool: says nothing about the server
    assert circuit.state == "half_open"
    assert circuit.admit() is True


def test_releasing_an_ordinary_call_frees_no_trial(clock: Clock) -> None:
    circuit = breaker(clock, threshold=1, cooldown=1.0)
    fail(circuit, 1)
    clock.now += 1
    assert circuit.admit() is True
    circuit.release(trial=False)
    with pytest.raises(CircuitOpen, match="a trial call is in flight"):
        circuit.admit()


def test_a_reconnect_lets_the_next_call_through_without_waiting(clock: Clock) -> None:
    circuit = breaker(clock, threshold=1, cooldown=30.0)
    fail(circuit, 1)
    circuit.record_probe()
    assert circuit.state == "half_open"
    assert circuit.status()["retry_in_seconds"] == 0.0
    assert circuit.admit() is True


def test_a_probe_changes_nothing_while_closed(clock: Clock) -> None:
    circuit = breaker(clock, threshold=2)
    fail(circuit, 1)
    circuit.record_probe()
    assert circuit.state == "closed" and circuit.failures == 1


def test_defaults_open_after_five_failures_for_two_seconds(clock: Clock) -> None:
    circuit = breaker(clock)
    fail(circuit, 4)
    assert circuit.state == "closed"
    fail(circuit, 1)
    assert circuit.status()["retry_in_seconds"] == 2.0
