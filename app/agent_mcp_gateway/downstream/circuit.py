"""A circuit breaker per downstream server: stop sending calls to a server that keeps failing.

After `threshold` consecutive failures (failed connects, calls whose connection was lost, calls
that timed out) the circuit opens and calls fail at once instead of each waiting out its own
timeout. It stays open until a probe succeeds: after a cooldown (doubling with every trip, up to
a cap) one trial call is let through, and a successful reconnect lets the next call through at
once. The trial's success closes the circuit; its failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

CircuitState = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """A call refused because the circuit is open; the message says why and until when."""


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 2.0,
        max_cooldown: float = 60.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.cooldown, self.max_cooldown = threshold, cooldown, max_cooldown
        self._on_change, self._clock = on_change, clock
        self._state: CircuitState = "closed"
        self.failures = 0
        self.last_failure: str | None = None
        self._trips = 0
        self._retry_at = 0.0
        self._trial_busy = False

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self._clock() >= self._retry_at:
            return "half_open"
        return self._state

    def admit(self) -> bool:
        """Let a call through or raise `CircuitOpen`; True when the call is the half-open trial."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._trial_busy:
            self._state, self._trial_busy = "half_open", True
            return True
        wait = max(0.0, self._retry_at - self._clock())
        probe = "a trial call is in flight" if self._trial_busy else f"next probe in {wait:.1f} s"
        raise CircuitOpen(
            f"circuit open after {self.failures} consecutive failures (last: {self.last_failure}); {probe}"
        )

    def release(self, trial: bool) -> None:
        """A call ended without saying anything about the server (e.g. an unknown tool)."""
        if trial:
            self._trial_busy = False

    def record_success(self) -> None:
        """The server answered a call: it works, whatever state the circuit was in."""
        self.failures, self._trips, self._trial_busy = 0, 0, False
        self._set("closed")

    def record_failure(self, reason: str) -> None:
        self.failures += 1
        self.last_failure = reason
        self._trial_busy = False
        if self._state != "closed" or self.failures >= self.threshold:
            self._trips += 1
            self._retry_at = self._clock() + min(self.max_cooldown, self.cooldown * 2 ** (self._trips - 1))
            self._set("open")

    def record_probe(self) -> None:
        """A reconnect succeeded: let the next call through as the trial without waiting."""
        if self._state == "open":
            self._retry_at = self._clock()

    def status(self) -> dict[str, Any]:
        state = self.state
        status: dict[str, Any] = {"state": state, "consecutive_failures": self.failures}
        if state != "closed":
            status["last_failure"] = self.last_failure
            status["retry_in_seconds"] = round(max(0.0, self._retry_at - self._clock()), 3)
        return status

    def _set(self, state: CircuitState) -> None:
        was_open = self._state != "closed"
        self._state = state
        if self._on_change is not None and was_open != (state != "closed"):
            self._on_change(state != "closed")
