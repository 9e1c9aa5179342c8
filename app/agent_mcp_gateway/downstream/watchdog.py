"""A watchdog process that ends the downstream process groups when the gateway dies.

The gateway ends its downstream groups itself when it closes a server or shuts down, but a
SIGKILL (or the OOM killer) gives it no chance to. A parent-death signal would reach only each
server's leader, not the processes it started, so one small helper process per gateway holds the
list of live groups instead: the gateway tells it about each group over a pipe, and when the pipe
reaches end of file (the kernel closes it as the gateway dies, however it dies) the helper ends
every group it still knows of.

This file is also the helper itself: it runs as `python -S watchdog.py`, standard library only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

log = logging.getLogger("agent_mcp_gateway.downstream")

TERM_GRACE = 2.0  # seconds a group has to exit on SIGTERM before it gets SIGKILL


class Watchdog:
    """The gateway's side: start the helper on first use and keep it told of live groups."""

    def __init__(self) -> None:
        self._groups: set[int] = set()
        self._helper: subprocess.Popen[bytes] | None = None

    def watch(self, pgid: int) -> None:
        self._groups.add(pgid)
        self._tell(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._groups.discard(pgid)
        self._tell(f"-{pgid}\n")

    def close(self) -> None:
        """Let the helper go (it ends any group still listed) and reap it."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        assert helper.stdin is not None
        helper.stdin.close()
        try:
            helper.wait(TERM_GRACE + 1)
        except subprocess.TimeoutExpired:
            helper.kill()

    def _tell(self, line: str) -> None:
        """Send one line; a helper that died is restarted and told every live group again."""
        for _ in range(2):
            if self._helper is None or self._helper.poll() is not None:
                self._start()
            assert self._helper is not None and self._helper.stdin is not None
            try:
                self._helper.stdin.write(line.encode())
                self._helper.stdin.flush()
                return
            except OSError as exc:
                log.warning("downstream watchdog unreachable; restarting it", extra={"error": repr(exc)})
                self._helper = None

    def _start(self) -> None:
        # Its own session (no terminal signals), no inherited stdout (over stdio that is the
        # client's channel, which must close when the gateway dies).
        self._helper = subprocess.Popen(
            [sys.executable, "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._helper.stdin is not None
        self._helper.stdin.write("".join(f"+{pgid}\n" for pgid in self._groups).encode())
        self._helper.stdin.flush()


def end_groups(pgids: Iterable[int], grace: float = TERM_GRACE) -> None:
    """SIGTERM every group, then SIGKILL whatever is left after `grace` seconds."""
    alive = {pgid for pgid in pgids if signal_group(pgid, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {pgid for pgid in alive if signal_group(pgid, 0)}
    for pgid in alive:
        signal_group(pgid, signal.SIGKILL)


def signal_group(pgid: int, signum: int) -> bool:
    """Signal a group; False once it is gone. (A permission error proves nothing either way.)"""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _main() -> None:
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        if text[:1] == b"+":
            groups.add(int(text[1:]))
        elif text[:1] == b"-":
            groups.discard(int(text[1:]))
    end_groups(groups)


if __name__ == "__main__":
    _main()
