"""The command line, run as a user runs it: a separate process with its own environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

SERVERS: dict[str, Any] = {
    "mcpServers": {
        "db": {"description": "Database", "command": "db-server"},
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"]},
    }
}
RULES: dict[str, Any] = {
    "agents": {
        "backend": {
            "allow": {"servers": ["db", "files"]},
            "deny": {"tools": {"db": ["drop_*", "delete_*"]}},
        },
        "researcher": {"allow": {"servers": ["files"], "tools": {"files": ["read_*"]}}},
    },
}


class Cli:
    """Runs `python -m agent_mcp_gateway` in an empty working directory with an empty home."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.cwd = root / "work"
        self.home.mkdir()
        self.cwd.mkdir()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("GATEWAY_") and key != "SEARCH_TOKEN"
        }
        self.env["HOME"] = str(self.home)

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "agent_mcp_gateway", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stdout + result.stderr
        return result

    def write(self, name: str, content: Any) -> Path:
        path = self.cwd / name
        path.write_text(json.dumps(content, indent=2))
        return path


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def configured(cli: Cli) -> Cli:
    cli.write(".mcp.json", SERVERS)
    cli.write(".mcp-gateway-rules.json", RULES)
    return cli


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"agent-mcp-gateway {version('agent-mcp-gateway')}"


def test_validate_ok(configured: Cli) -> None:
    result = configured("validate")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK: 2 servers, 2 agents"
    assert f"servers file: {configured.cwd / '.mcp.json'}" in result.stdout
    assert f"rules file:   {configured.cwd / '.mcp-gateway-rules.json'}" in result.stdout
    warnings = [line for line in lines if line.startswith("warning")]
    # npx is on PATH here (Node.js is part of the test set-up); db-server is not.
    assert warnings == ["warning: mcpServers.db.command: 'db-server' is not found on PATH"]


def test_validate_warns_about_agents_that_reach_nothing(configured: Cli) -> None:
    rules = {"agents": {"lost": {"allow": {"servers": ["nowhere"]}}, "ok": {"allow": {"servers": ["db"]}}}}
    path = configured.write("lost.json", rules)
    result = configured("validate", "--rules", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning: agents.lost: this agent can reach none of the configured servers" in result.stdout
    assert "agents.ok:" not in result.stdout
    empty = configured.write("empty.json", {"agents": {}})
    result = configured("validate", "--rules", str(empty))
    assert "warning: agents: the rules file defines no agent" in result.stdout


def test_validate_prints_effective_settings(configured: Cli) -> None:
    result = configured("validate", "--settings", GATEWAY_HTTP_PORT="9100", GATEWAY_LOG_FORMAT="TEXT")
    assert result.returncode == 0, result.stderr
    assert "  GATEWAY_HTTP_PORT=9100" in result.stdout
    assert "  GATEWAY_LOG_FORMAT=text" in result.stdout
    assert "  GATEWAY_RATE_LIMIT=600/minute" in result.stdout
    assert "  GATEWAY_AGENT=(unset)" in result.stdout


BAD_SETTINGS = [
    ("GATEWAY_RATE_LIMIT", "lots", "a rate limit such as '600/minute'"),
    ("GATEWAY_HTTP_PORT", "abc", "an integer from 1 to 65535"),
    ("GATEWAY_HTTP_PORT", "70000", "an integer from 1 to 65535"),
    ("GATEWAY_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("GATEWAY_LOG_FORMAT", "xml", "'json' or 'text'"),
    ("GATEWAY_MAX_BODY_BYTES", "-1", "a positive integer (bytes)"),
    ("GATEWAY_SESSION_TTL", "nan", "a positive number (seconds)"),
    ("GATEWAY_TRANSPORT", "carrier-pigeon", "'stdio' or 'http'"),
    ("GATEWAY_HTTP_HOST", "not a host!", "an IP address or a host name"),
    ("GATEWAY_CORS_ORIGINS", "app.example", "comma-separated origins"),
    ("GATEWAY_AUTH", "maybe", "'none'"),
    ("GATEWAY_DEBUG", "sometimes", "a boolean"),
    ("GATEWAY_WORKERS", "0", "an integer from 1 to 64"),
    ("GATEWAY_WORKERS", "two", "an integer from 1 to 64"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_SETTINGS)
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_bad_setting_is_one_line_and_exit_2(
    configured: Cli, transport: str, variable: str, value: str, expected: str
) -> None:
    env = {"GATEWAY_TRANSPORT": transport, variable: value}
    result = configured("serve", **env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"agent-mcp-gateway: {variable}={value!r} is not valid: expected ")
    assert expected in lines[0]


def test_validate_reports_a_bad_setting(configured: Cli) -> None:
    result = configured("validate", GATEWAY_SESSION_TTL="-5")
    assert result.returncode == 1
    assert "GATEWAY_SESSION_TTL='-5' is not valid" in result.stderr


def test_token_prints_once_and_writes_the_hash(configured: Cli) -> None:
    import hashlib

    before = json.loads((configured.cwd / ".mcp-gateway-rules.json").read_text())
    result = configured("token", "researcher")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 43  # 32 random bytes in URL-safe base64
    line = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert f'"{line}"' in result.stderr
    assert json.loads((configured.cwd / ".mcp-gateway-rules.json").read_text()) == before

    written = configured("token", "researcher", "--write")
    assert written.returncode == 0, written.stderr
    second = written.stdout.strip()
    assert second != token
    after = json.loads((configured.cwd / ".mcp-gateway-rules.json").read_text())
    assert after["agents"]["researcher"]["tokens"] == [
        "sha256:" + hashlib.sha256(second.encode()).hexdigest()
    ]
    after["agents"]["researcher"].pop("tokens")
    assert after == before  # nothing else changed
    assert [p.name for p in configured.cwd.iterdir() if p.name.endswith(".tmp")] == []
    assert configured("validate").returncode == 0

    unknown = configured("token", "ghost")
    assert unknown.returncode == 1
    assert "agent 'ghost' is not in" in unknown.stderr


def test_validate_prints_warnings(configured: Cli) -> None:
    rules = {"agents": {"a": {"allow": {"servers": ["db", "dbx"], "tools": {"ghost": ["x"]}}}}}
    path = configured.write("other-rules.json", rules)
    result = configured("validate", "--rules", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "OK: 2 servers, 1 agent"
    assert "warning: agents.a.allow.servers[1]: 'dbx' matches no server" in result.stdout
    assert "warning: agents.a.allow.tools.ghost: 'ghost' matches no server" in result.stdout


def test_validate_error(configured: Cli) -> None:
    configured.write(".mcp.json", {"mcpServers": {"db": {"command": "x", "timeout_ms": "soon"}}})
    result = configured("validate")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {configured.cwd / '.mcp.json'}: mcpServers.db.timeout_ms: must be an integer"
    )


def test_validate_unset_variable(configured: Cli) -> None:
    servers = {
        "mcpServers": {"s": {"url": "https://h/mcp", "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}}
    }
    path = configured.write("servers.json", servers)
    result = configured("validate", "--mcp-config", str(path))
    assert result.returncode == 1
    assert "mcpServers.s.headers.Authorization" in result.stderr
    assert "SEARCH_TOKEN is not set and has no default (server 's')" in result.stderr
    assert configured("validate", "--mcp-config", str(path), SEARCH_TOKEN="t").returncode == 0


def test_validate_without_files(cli: Cli) -> None:
    result = cli("validate")
    assert result.returncode == 1
    assert "error: .mcp.json: not found; set GATEWAY_MCP_CONFIG" in result.stderr
    assert "'agent-mcp-gateway init' writes commented examples there" in result.stderr


def test_serve_without_files_suggests_init(cli: Cli) -> None:
    result = cli("serve")  # stdio; stops before reading stdin
    assert result.returncode == 2
    assert ".mcp.json: not found" in result.stderr
    assert "'agent-mcp-gateway init' writes commented examples there" in result.stderr


def test_validate_follows_env_vars(configured: Cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"agents": {"solo": {}}}))
    result = configured("validate", GATEWAY_RULES=str(elsewhere))
    assert result.returncode == 0
    assert "OK: 2 servers, 1 agent" in result.stdout
    assert f"rules file:   {elsewhere}" in result.stdout


@pytest.mark.parametrize(
    ("args", "status", "output"),
    [
        (("backend", "db", "select"), 0, "ALLOW agents.backend.allow.servers[0]"),
        (("backend", "files"), 0, "ALLOW agents.backend.allow.servers[1]"),
        (("backend", "db", "drop_table"), 1, "DENY agents.backend.deny.tools.db[0]"),
        (("backend", "db", "delete_row"), 1, "DENY agents.backend.deny.tools.db[1]"),
        (("researcher", "files", "read_file"), 0, "ALLOW agents.researcher.allow.tools.files[0]"),
        (("researcher", "files", "write_file"), 1, "DENY agents.researcher.allow.tools.files"),
        (("researcher", "db"), 1, "DENY default-deny"),
        (("ghost", "db"), 1, "INVALID_AGENT_ID: agent 'ghost' is not configured"),
        (("", "db"), 1, "INVALID_AGENT_ID: agent_id is required by this gateway's policy"),
    ],
)
def test_check_policy(configured: Cli, args: tuple[str, ...], status: int, output: str) -> None:
    result = configured("check-policy", *args)
    assert (result.returncode, result.stdout.strip()) == (status, output)


def test_check_policy_unknown_server_is_noted(configured: Cli) -> None:
    result = configured("check-policy", "backend", "nosuch")
    assert (result.returncode, result.stdout.strip()) == (1, "DENY default-deny")
    assert "server 'nosuch' is not in" in result.stderr


def test_check_policy_with_broken_files(configured: Cli) -> None:
    configured.write(".mcp-gateway-rules.json", {"agents": {"bad id": {}}})
    result = configured("check-policy", "backend", "db")
    assert result.returncode == 2
    assert "agents: agent id 'bad id' must match" in result.stderr


def test_init_writes_examples_that_validate(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "new" / "config"
    result = cli("init", "--dir", str(target))
    assert result.returncode == 0, result.stderr
    servers, rules = target / ".mcp.json", target / ".mcp-gateway-rules.json"
    assert f"wrote {servers}" in result.stdout
    assert f"wrote {rules}" in result.stdout
    assert "GATEWAY_MCP_CONFIG" in result.stdout  # not a searched directory: says how to use it

    checked = cli("validate", "--mcp-config", str(servers), "--rules", str(rules))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == "OK: 3 servers, 3 agents"
    assert "warning" not in checked.stdout
    assert json.loads(servers.read_text())["mcpServers"]["files"]["args"][-1] == "${HOME}"

    decide = ("--mcp-config", str(servers), "--rules", str(rules))
    assert cli("check-policy", *decide, "researcher", "files", "write_file").returncode == 1
    assert cli("check-policy", *decide, "researcher", "files", "read_text_file").returncode == 0
    assert cli("check-policy", *decide, "coder", "search").stdout.startswith("DENY agents.coder.deny")


def test_init_says_what_the_examples_need(cli: Cli, tmp_path: Path) -> None:
    bare = tmp_path / "bare-path"  # neither mcp-server-time nor npx on PATH
    bare.mkdir()
    result = cli("init", "--dir", str(tmp_path / "config"), PATH=str(bare))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("Before these servers work:\n", 1)[1].splitlines()
    assert notes[:4] == [
        "  time: 'mcp-server-time' is not on PATH: pip install mcp-server-time "
        "(or: uv tool install mcp-server-time)",
        "  files: 'npx' is not on PATH: Node.js 18 or newer with npm "
        "(Debian/Ubuntu: apt-get install nodejs npm)",
        "  search: https://search.example.com/mcp is a placeholder; "
        "put your server's URL there, or remove it",
        "  (the gateway starts without them: calls to them get SERVER_UNAVAILABLE)",
    ]
    checked = cli(
        "validate",
        "--mcp-config",
        str(tmp_path / "config" / ".mcp.json"),
        "--rules",
        str(tmp_path / "config" / ".mcp-gateway-rules.json"),
        PATH=str(bare),
    )
    assert "'mcp-server-time' is not found on PATH (install: pip install mcp-server-time" in checked.stdout

    installed = tmp_path / "installed"  # both commands there: npx still fetches its package
    installed.mkdir()
    for command in ("mcp-server-time", "npx"):
        (installed / command).write_text("#!/bin/sh\n")
        (installed / command).chmod(0o755)
    again = cli("init", "--dir", str(tmp_path / "again"), PATH=str(installed))
    assert again.stdout.split("Before these servers work:\n", 1)[1].splitlines()[:2] == [
        "  files: npx fetches @modelcontextprotocol/server-filesystem at its first start "
        "(needs the network; the server is reported down until it is there)",
        "  search: https://search.example.com/mcp is a placeholder; "
        "put your server's URL there, or remove it",
    ]


def test_init_never_overwrites(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "config"
    assert cli("init", "--dir", str(target)).returncode == 0
    servers, rules = target / ".mcp.json", target / ".mcp-gateway-rules.json"
    rules.write_text("mine")

    again = cli("init", "--dir", str(target))
    assert again.returncode == 1
    assert f"exists, not overwritten: {servers}" in again.stdout
    assert f"exists, not overwritten: {rules}" in again.stdout
    assert rules.read_text() == "mine"

    servers.unlink()
    partly = cli("init", "--dir", str(target))
    assert partly.returncode == 0
    assert f"wrote {servers}" in partly.stdout
    assert rules.read_text() == "mine"


def test_init_default_dir_is_found_by_validate(cli: Cli) -> None:
    result = cli("init")
    assert result.returncode == 0, result.stderr
    user_dir = cli.home / ".config" / "agent-mcp-gateway"
    assert f"wrote {user_dir / '.mcp.json'}" in result.stdout
    checked = cli("validate")
    assert checked.returncode == 0, checked.stderr
    assert f"servers file: {user_dir / '.mcp.json'}" in checked.stdout


def test_examples_explain_every_object() -> None:
    from importlib import resources

    examples = resources.files("agent_mcp_gateway") / "examples"

    def objects(value: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
        if not isinstance(value, dict):
            return []
        found = [(path, value)]
        for key, child in value.items():
            found += objects(child, f"{path}.{key}")
        return found

    servers = json.loads((examples / "mcp.json").read_text())
    rules = json.loads((examples / "mcp-gateway-rules.json").read_text())
    described = [("servers", servers), *objects(servers["mcpServers"], "mcpServers")[1:]]
    described = [(p, o) for p, o in described if p.count(".") <= 1]
    described += [("rules", rules), ("defaults", rules["defaults"])]
    described += [(f"agents.{name}", agent) for name, agent in rules["agents"].items()]
    for path, obj in described:
        assert isinstance(obj.get("$comment"), str), f"{path} has no $comment"


def test_usage_errors_exit_2(cli: Cli) -> None:
    result = cli("no-such-command")
    assert result.returncode == 2
    assert "usage: agent-mcp-gateway" in result.stderr
    assert cli("check-policy").returncode == 2
