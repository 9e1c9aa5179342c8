"""Shutdown of real gateway processes: SIGTERM (and, over stdio, end of file on stdin) lets the
calls in flight finish and their results reach the client, in both protocol eras; new work is
refused meanwhile; standing streams end at once; the process exits 0 within the grace; and the
Granian worker does not outlive a SIGKILLed main process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError

from conftest import (
    ACCEPT_BOTH,
    STANDARD_RULES,
    WAIT_SECONDS,
    GatewayFiles,
    HttpGateway,
    child_pids,
    fixture_server,
    gateway_call,
    initialize_message,
    process_alive,
    start_http_gateway,
    stdio_gateway,
    wait_until,
)

CALLS = 5
SECONDS = 1.5  # how long each call in flight sleeps
BOTH = ACCEPT_BOTH
INITIALIZE = initialize_message("shutdown-test", request_id=0)


@pytest.fixture
def slow_files(gateway_files: GatewayFiles) -> GatewayFiles:
    started = started_folder(gateway_files)
    started.mkdir()
    gateway_files.write_servers({"slow": fixture_server("slow", env={"SLOW_STARTED_DIR": str(started)})})
    gateway_files.write_rules(STANDARD_RULES)
    return gateway_files


def started_folder(files: GatewayFiles) -> Path:
    """Where the slow server leaves a file as each `sleep` call starts."""
    return files.directory.parent / "slow-started"


def started_calls(files: GatewayFiles) -> int:
    return len(list(started_folder(files).iterdir()))


def in_flight(files: GatewayFiles, count: int) -> None:
    """Until `count` calls have reached the slow server (and so are in flight)."""
    assert wait_until(lambda: started_calls(files) >= count), (
        f"{started_calls(files)} of {count} calls started"
    )


def sleep_arguments(seconds: float) -> dict[str, Any]:
    return {"agent_id": "builder", "server": "slow", "tool": "sleep", "args": {"seconds": seconds}}


def tools_call(request_id: int, seconds: float) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "execute_tool", "arguments": sleep_arguments(seconds)},
    }


def slept(result: Any, seconds: float = SECONDS) -> bool:
    return not result.is_error and result.structured_content == {"result": f"slept {seconds:g}"}


# --- HTTP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_http_sigterm_delivers_results_in_flight(slow_files: GatewayFiles, mode: str) -> None:
    gateway = start_http_gateway(slow_files)
    try:
        async with Client(StreamableHttpTransport(gateway.mcp_url), mode=mode, timeout=30) as client:
            calls = [
                asyncio.create_task(client.call_tool_mcp("execute_tool", sleep_arguments(SECONDS)))
                for _ in range(CALLS)
            ]
            await asyncio.to_thread(in_flight, slow_files, CALLS)
            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as http:
                assert (await http.get("/health")).status_code == 200
                ready = await http.get("/ready")
                assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
                refused = await http.post("/mcp", json=INITIALIZE, headers=BOTH)
                assert refused.status_code == 503
                assert refused.json()["error"]["data"]["code"] == "SHUTTING_DOWN"
            results = await asyncio.gather(*calls)
        assert all(slept(result) for result in results), results
        assert await asyncio.to_thread(gateway.process.wait, WAIT_SECONDS) == 0
        assert time.monotonic() - signalled < SECONDS + 30  # not a call's full 60 s
    finally:
        stop(gateway)


async def test_http_sigterm_ends_streams_at_once_and_cuts_calls_at_the_grace(
    slow_files: GatewayFiles,
) -> None:
    # A grace well above what "at once" can take on a loaded machine, so the two are told apart.
    gateway = start_http_gateway(slow_files, GATEWAY_SHUTDOWN_GRACE="10")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            initialized = await http.post(gateway.mcp_url, json=INITIALIZE, headers=BOTH)
            session = {
                **BOTH,
                "mcp-session-id": initialized.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            }
            long_call = asyncio.create_task(
                http.post(gateway.mcp_url, json=tools_call(1, 60), headers=session)
            )
            async with http.stream("GET", gateway.mcp_url, headers=session) as stream:
                assert stream.status_code == 200
                await asyncio.to_thread(in_flight, slow_files, 1)
                signalled = time.monotonic()
                gateway.process.send_signal(signal.SIGTERM)
                async for _ in stream.aiter_bytes():
                    pass  # ends cleanly, without an error
                stream_ended = time.monotonic() - signalled
            try:
                cut = (await long_call).text
            except httpx.HTTPError as error:
                cut = repr(error)
        code = await asyncio.to_thread(gateway.process.wait, WAIT_SECONDS)
        exited = time.monotonic() - signalled
        assert "slept" not in cut
        assert stream_ended < 5, stream_ended  # at once, not at the 10 s grace
        assert code == 0
        assert 10 <= exited < 10 + 30, exited  # at the grace, not the call's 60 s
    finally:
        stop(gateway)


def test_worker_dies_with_the_main_process(slow_files: GatewayFiles) -> None:
    gateway = start_http_gateway(slow_files)
    try:
        [worker] = child_pids(gateway.process.pid)
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(WAIT_SECONDS)
        assert wait_until(lambda: not process_alive(worker))
    finally:
        stop(gateway)


def stop(gateway: HttpGateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.kill()
        gateway.process.wait()


# --- stdio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_sigterm_delivers_results_in_flight(slow_files: GatewayFiles, mode: str) -> None:
    async with stdio_gateway(slow_files, mode=mode, GATEWAY_DEBUG="1") as client:
        pid = (await gateway_call(client, "get_gateway_status"))["pid"]
        calls = [
            asyncio.create_task(client.call_tool_mcp("execute_tool", sleep_arguments(SECONDS)))
            for _ in range(CALLS)
        ]
        await asyncio.to_thread(in_flight, slow_files, CALLS)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        with pytest.raises(MCPError) as refused:
            await client.call_tool_mcp("list_servers", {"agent_id": "builder"})
        assert refused.value.error.data == {"code": "SHUTTING_DOWN"}
        results = await asyncio.gather(*calls)
        assert all(slept(result) for result in results), results
        assert await asyncio.to_thread(wait_until, lambda: not process_alive(pid))


def test_stdio_end_of_input_delivers_results_in_flight(slow_files: GatewayFiles) -> None:
    gateway = RawStdio(slow_files)
    answers = gateway.calls_then(gateway.close_input, seconds=SECONDS, files=slow_files)
    assert [answer.get("result", {}).get("structuredContent") for answer in answers] == [
        {"result": f"slept {SECONDS:g}"}
    ] * CALLS
    assert gateway.process.wait(WAIT_SECONDS) == 0


def test_stdio_grace_bounds_the_drain(slow_files: GatewayFiles) -> None:
    gateway = RawStdio(slow_files, GATEWAY_SHUTDOWN_GRACE="1")
    signalled: list[float] = []

    def terminate() -> None:
        signalled.append(time.monotonic())
        gateway.process.send_signal(signal.SIGTERM)

    answers = gateway.calls_then(terminate, seconds=60, files=slow_files)
    assert gateway.process.wait(WAIT_SECONDS) == 0
    # The 1 s grace, not the calls' 60 s: room for a loaded machine, and still well short of 60.
    assert time.monotonic() - signalled[0] < 1 + 30
    assert all("error" in answer for answer in answers)


class RawStdio:
    """A gateway process spoken to line by line, so the test can close its stdin and read on."""

    def __init__(self, files: GatewayFiles, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent_mcp_gateway"],
            cwd=files.directory,
            env={**os.environ, **files.env(**env)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.send(INITIALIZE)
        assert "result" in self.receive()
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.send(tools_call(100, 0))  # waits for the slow server to be up
        assert "result" in self.receive()

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def close_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        return json.loads(line) if line else {}

    def calls_then(self, end: Callable[[], Any], seconds: float, files: GatewayFiles) -> list[dict[str, Any]]:
        """Start CALLS calls, `end` the session once all are in flight; every answer until EOF."""
        before = started_calls(files)
        for request_id in range(1, CALLS + 1):
            self.send(tools_call(request_id, seconds))
        in_flight(files, before + CALLS)
        end()
        answers = []
        while message := self.receive():
            if "id" in message:
                answers.append(message)
        return sorted(answers, key=lambda answer: answer["id"])
