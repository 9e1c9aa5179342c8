"""Hostile input over stdio: junk lines on a real gateway process's stdin, among real requests.
The HTTP side is fuzzed in process in tests/inprocess/test_fuzz.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import PY, STARTUP_SECONDS, initialize_message
from inprocess.test_fuzz import config_dir, deep


def test_stdio_survives_junk_lines(tmp_path: Path) -> None:
    """Junk on the gateway's stdin gets JSON-RPC errors (or nothing), never the process's end."""
    servers, rules = config_dir(tmp_path / "config")
    env = {
        **os.environ,
        "GATEWAY_MCP_CONFIG": str(servers),
        "GATEWAY_RULES": str(rules),
        "GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    junk = [
        b"not json",
        b"\xff\xfe\xfd",
        b"{}",
        b"[]",
        b'{"jsonrpc":"2.0","id":1}',
        deep(5000).encode(),
        ('{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":' + deep(5000) + "}}").encode(),
        b'{"jsonrpc":"2.0","id":3,"method":"nope"}',
    ]
    init = initialize_message("fuzz", request_id=10)
    lines = [
        json.dumps(init).encode(),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(),
    ]
    lines += junk
    lines.append(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 11,
                "method": "tools/call",
                "params": {"name": "list_servers", "arguments": {"agent_id": "builder"}},
            }
        ).encode()
    )
    process = subprocess.Popen(
        [PY, "-m", "agent_mcp_gateway"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"\n".join(lines) + b"\n")
    process.stdin.flush()
    answers: dict[Any, Any] = {}
    deadline = time.monotonic() + STARTUP_SECONDS
    while 11 not in answers and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        answer = json.loads(line)
        answers[answer.get("id")] = answer
    process.stdin.close()
    stderr = process.stderr.read() if process.stderr else b""
    process.wait(30)
    assert 11 in answers, (answers, stderr[-2000:])
    assert answers[11]["result"]["structuredContent"]["servers"][0]["name"] == "echo"
    assert answers[3]["error"]["code"] == -32601
    assert b"Traceback" not in stderr
