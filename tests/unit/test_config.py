"""Configuration files: every broken file names the file, the JSON path and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_mcp_gateway import config
from agent_mcp_gateway.config import ConfigError, cross_check, discover, load, load_mcp_config, load_rules

GOOD_SERVERS: dict[str, Any] = {
    "mcpServers": {
        "db": {"description": "Database", "command": "db-server", "args": ["--ro"]},
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"]},
        "search": {"url": "https://search.example/mcp", "headers": {"Authorization": "Bearer t"}},
    }
}
GOOD_RULES: dict[str, Any] = {
    "agents": {
        "backend": {
            "allow": {"servers": ["db", "files"]},
            "deny": {"tools": {"db": ["drop_*"]}},
        },
        "default": {"deny": {"servers": ["*"]}},
    },
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (config.MCP_CONFIG_ENV, config.RULES_ENV, "SEARCH_TOKEN", "UNSET_VAR"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def server(**fields: Any) -> dict[str, Any]:
    return {"mcpServers": {"s": fields}}


def agent(**fields: Any) -> dict[str, Any]:
    return {"agents": {"a": fields}}


BROKEN = [
    # (file name, content, JSON path, reason)
    ("args.json", server(command="x", args="-y"), "mcpServers.s.args", "must be a list"),
    ("arg.json", server(command="x", args=["-y", 3]), "mcpServers.s.args[1]", "must be a string"),
    (
        "timeout-str.json",
        server(command="x", timeout_ms="5000"),
        "mcpServers.s.timeout_ms",
        "must be an integer",
    ),
    ("timeout-neg.json", server(command="x", timeout_ms=-1), "mcpServers.s.timeout_ms", "greater than 0"),
    ("timeout-zero.json", server(command="x", timeout_ms=0), "mcpServers.s.timeout_ms", "greater than 0"),
    ("both.json", server(command="x", url="https://h/mcp"), "mcpServers.s", "both 'command' and 'url'"),
    (
        "neither.json",
        server(description="nothing to run"),
        "mcpServers.s",
        "needs 'command' (stdio) or 'url'",
    ),
    (
        "headers.json",
        server(command="x", headers={"A": "b"}),
        "mcpServers.s",
        "'headers' are for 'url' servers",
    ),
    (
        "args-on-url.json",
        server(url="https://h/mcp", args=["x"]),
        "mcpServers.s",
        "'args', 'env' and 'cwd' are for stdio",
    ),
    ("scheme.json", server(url="ftp://h/mcp"), "mcpServers.s", "must start with http:// or https://"),
    ("env.json", server(command="x", env={"LEVEL": 3}), "mcpServers.s.env.LEVEL", "must be a string"),
    ("unknown.json", server(command="x", argz=[]), "mcpServers.s.argz", "unknown field"),
    (
        "protocol.json",
        server(command="x", protocol="2025-06-18"),
        "mcpServers.s.protocol",
        "Input should be 'auto', '2026-07-28' or '2025-11-25'",
    ),
    ("missing.json", {"servers": {}}, "mcpServers", "required field is missing"),
    ("servers-list.json", {"mcpServers": []}, "mcpServers", "must be an object"),
    ("server-str.json", {"mcpServers": {"s": "npx"}}, "mcpServers.s", "must be an object"),
    ("top-list.json", [], "(top level)", "must be an object"),
    ("name.json", {"mcpServers": {"my server": {"command": "x"}}}, "mcpServers", "server name 'my server'"),
    ("comment.json", server(command="x", **{"$comment": 5}), "mcpServers.s.$comment", "must be a string"),
    (
        "unset.json",
        server(url="https://h/mcp", headers={"Authorization": "Bearer ${UNSET_VAR}"}),
        "mcpServers.s.headers.Authorization",
        "environment variable UNSET_VAR is not set and has no default (server 's')",
    ),
    (
        "unset-arg.json",
        server(command="x", args=["--token", "${UNSET_VAR}"]),
        "mcpServers.s.args[1]",
        "UNSET_VAR is not set",
    ),
]

BROKEN_RULES = [
    ("agents.json", {"agents": ["a"]}, "agents", "must be an object"),
    ("no-agents.json", {"defaults": {}}, "agents", "required field is missing"),
    ("agent-id.json", {"agents": {"bad id": {}}}, "agents", "agent id 'bad id' must match"),
    ("rate.json", agent(rate_limit="lots"), "agents.a.rate_limit", "rate limit 'lots' is not valid"),
    ("servers.json", agent(allow={"servers": "db"}), "agents.a.allow.servers", "must be a list"),
    ("pattern.json", agent(deny={"servers": [""]}), "agents.a.deny.servers[0]", "at least 1 character"),
    ("tools.json", agent(allow={"tools": {"db": "select"}}), "agents.a.allow.tools.db", "must be a list"),
    ("field.json", agent(alow={"servers": ["db"]}), "agents.a.alow", "unknown field"),
    (
        "defaults.json",
        {"agents": {}, "defaults": {"deny_on_missing_agent": "no"}},
        "defaults.deny_on_missing_agent",
        "must be true or false",
    ),
    (
        "unset.json",
        agent(allow={"servers": ["${UNSET_VAR}"]}),
        "agents.a.allow.servers[0]",
        "UNSET_VAR is not set",
    ),
]


@pytest.mark.parametrize(("name", "content", "path", "reason"), BROKEN, ids=[case[0] for case in BROKEN])
def test_broken_servers_file(tmp_path: Path, name: str, content: Any, path: str, reason: str) -> None:
    file = write(tmp_path / name, content)
    with pytest.raises(ConfigError) as raised:
        load_mcp_config(file)
    assert_error(raised.value, file, path, reason)


@pytest.mark.parametrize(
    ("name", "content", "path", "reason"), BROKEN_RULES, ids=[case[0] for case in BROKEN_RULES]
)
def test_broken_rules_file(tmp_path: Path, name: str, content: Any, path: str, reason: str) -> None:
    file = write(tmp_path / name, content)
    with pytest.raises(ConfigError) as raised:
        load_rules(file)
    assert_error(raised.value, file, path, reason)


def assert_error(error: ConfigError, file: Path, path: str, reason: str) -> None:
    assert error.file == str(file)
    assert error.path == path
    assert reason in error.reason
    assert str(error) == f"{file}: {path}: {error.reason}"


@pytest.mark.parametrize("loader", [load_mcp_config, load_rules])
def test_bad_json_names_line_and_column(tmp_path: Path, loader: Any) -> None:
    file = write(tmp_path / "bad.json", '{\n  "mcpServers": {\n    "a": {"command": "x",}\n  }\n}\n')
    with pytest.raises(ConfigError) as raised:
        loader(file)
    assert_error(raised.value, file, "line 3 column 26", "invalid JSON: Expecting property name")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_rules(tmp_path / "absent.json")
    assert str(raised.value) == f"{tmp_path / 'absent.json'}: file does not exist"


# --- substitution -------------------------------------------------------------------------------


def test_substitution_in_args_env_headers_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA", "/srv/data")
    monkeypatch.setenv("SEARCH_TOKEN", "s3cret")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("SEARCH_HOST", raising=False)
    file = write(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "files": {
                    "command": "npx",
                    "args": ["-y", "fs", "${DATA}", "${DATA}/a:${DATA}/b", "${LOG_LEVEL:-info}"],
                    "env": {"LOG": "${LOG_LEVEL:-info}", "NONE": "${LOG_LEVEL:-}", "E": "${EMPTY:-fallback}"},
                    "cwd": "${DATA}",
                },
                "search": {
                    "url": "https://${SEARCH_HOST:-search.example}/mcp",
                    "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}", "X-Empty": "[${EMPTY}]"},
                },
            }
        },
    )
    servers = load_mcp_config(file).mcpServers
    files, search = servers["files"], servers["search"]
    assert files.args == ("-y", "fs", "/srv/data", "/srv/data/a:/srv/data/b", "info")
    assert files.env == {"LOG": "info", "NONE": "", "E": "fallback"}
    assert files.cwd == "/srv/data"
    assert search.url == "https://search.example/mcp"
    assert search.headers == {"Authorization": "Bearer s3cret", "X-Empty": "[]"}
    assert (files.kind, search.kind) == ("stdio", "http")


def test_comments_accepted_in_every_object(tmp_path: Path) -> None:
    note = {"$comment": "explains ${UNSET_VAR}, which is never expanded"}
    servers = write(
        tmp_path / ".mcp.json",
        {
            **note,
            "mcpServers": {
                **note,
                "files": {**note, "command": "x", "env": {**note, "A": "1"}},
                "search": {
                    **note,
                    "url": "https://h/mcp",
                    "headers": {**note, "A": "1"},
                    "transport": "http",
                },
            },
        },
    )
    rules = write(
        tmp_path / "rules.json",
        {
            **note,
            "agents": {
                **note,
                "a": {
                    **note,
                    "allow": {**note, "servers": ["files"], "tools": {**note, "files": ["read_*"]}},
                    "deny": {**note, "servers": ["search"]},
                },
            },
            "defaults": {**note, "deny_on_missing_agent": False},
        },
    )
    loaded = load(servers, rules)
    assert set(loaded.servers) == {"files", "search"}
    assert loaded.servers["files"].env == {"A": "1"}
    assert loaded.servers["search"].headers == {"A": "1"}
    assert set(loaded.rules.agents) == {"a"}
    assert dict(loaded.rules.agents["a"].allow.tools) == {"files": ("read_*",)}
    assert loaded.rules.defaults.deny_on_missing_agent is False
    assert loaded.warnings == ()


# --- discovery --------------------------------------------------------------------------------


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "home" / ".config" / "agent-mcp-gateway"
    cwd = tmp_path / "project"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert config.user_config_dir() == user_dir

    with pytest.raises(ConfigError) as raised:
        discover(None, config.MCP_CONFIG_ENV, ".mcp.json")
    assert raised.value.file == ".mcp.json"
    assert config.MCP_CONFIG_ENV in raised.value.reason
    assert str(user_dir) in raised.value.reason
    assert "'agent-mcp-gateway init' writes commented examples there" in raised.value.reason

    user_dir.mkdir(parents=True)
    write(user_dir / ".mcp.json", GOOD_SERVERS)
    assert discover(None, config.MCP_CONFIG_ENV, ".mcp.json") == user_dir / ".mcp.json"

    write(cwd / ".mcp.json", GOOD_SERVERS)
    assert discover(None, config.MCP_CONFIG_ENV, ".mcp.json") == cwd / ".mcp.json"

    explicit = write(tmp_path / "elsewhere.json", GOOD_SERVERS)
    assert discover(explicit, config.MCP_CONFIG_ENV, ".mcp.json") == explicit


def test_load_discovers_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "home" / ".config" / "agent-mcp-gateway"
    user_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    write(user_dir / ".mcp-gateway-rules.json", GOOD_RULES)
    loaded = load(write(tmp_path / "servers.json", GOOD_SERVERS))
    assert loaded.mcp_path == tmp_path / "servers.json"
    assert loaded.rules_path == user_dir / ".mcp-gateway-rules.json"
    assert set(loaded.servers) == {"db", "files", "search"}


def test_explicit_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gone\.json: file does not exist"):
        load(write(tmp_path / "s.json", GOOD_SERVERS), tmp_path / "gone.json")


# --- cross-check --------------------------------------------------------------------------------


def test_cross_check_warns_about_unknown_servers(tmp_path: Path) -> None:
    rules = {
        "agents": {
            "a": {
                "allow": {"servers": ["db", "dbx", "file?"], "tools": {"ghost*": ["x"]}},
                "deny": {"servers": ["*"], "tools": {"[sd]*": ["drop"]}},
            }
        }
    }
    loaded = load(write(tmp_path / "s.json", GOOD_SERVERS), write(tmp_path / "r.json", rules))
    assert loaded.warnings == (
        "agents.a.allow.servers[1]: 'dbx' matches no server in the servers file",
        "agents.a.allow.tools.ghost*: 'ghost*' matches no server in the servers file",
    )
    assert cross_check(loaded.mcp, loaded.rules) == list(loaded.warnings)


def test_good_files_have_no_warnings(tmp_path: Path) -> None:
    loaded = load(write(tmp_path / "s.json", GOOD_SERVERS), write(tmp_path / "r.json", GOOD_RULES))
    assert loaded.warnings == ()
    assert loaded.rules.defaults.deny_on_missing_agent is True


# --- per-agent downstream credentials -----------------------------------------------------------

CREDENTIAL_SERVERS: dict[str, Any] = {
    "mcpServers": {
        "remote": {"url": "https://remote.example/mcp", "headers": {"Authorization": "Bearer shared"}},
        "strict": {"url": "https://strict.example/mcp", "credentials": "per-agent"},
        "local": {"command": "local-server"},
    }
}


def credentials_rules(headers: dict[str, Any], server: str = "remote") -> dict[str, Any]:
    return {"agents": {"a": {"credentials": {server: {"headers": headers}}}}}


def test_credentials_come_from_the_environment_and_from_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A_REMOTE_TOKEN", "env-secret-1")
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets" / "strict.token", "file-secret-2\n")  # as a mounted secret often ends
    rules = {
        "agents": {
            "a": {
                "credentials": {
                    "remote": {"headers": {"Authorization": "Bearer ${A_REMOTE_TOKEN}"}},
                    "strict": {"headers": {"X-Api-Key": "${file:secrets/strict.token}"}},
                }
            }
        }
    }
    loaded = load(write(tmp_path / "s.json", CREDENTIAL_SERVERS), write(tmp_path / "r.json", rules))
    remote = loaded.rules.credentials_for("a", "remote")
    strict = loaded.rules.credentials_for("a", "strict")
    assert remote is not None and remote.plain() == {"Authorization": "Bearer env-secret-1"}
    assert strict is not None and strict.plain() == {"X-Api-Key": "file-secret-2"}
    assert loaded.rules.credentials_for("a", "local") is None
    assert loaded.rules.credentials_for("nobody", "remote") is None
    # The values never show in a repr or a dump of the configuration.
    shown = repr(loaded) + loaded.rules.model_dump_json()
    assert "env-secret-1" not in shown and "file-secret-2" not in shown


@pytest.mark.parametrize(
    ("headers", "server", "path", "reason"),
    [
        (
            {"Authorization": "Bearer ${UNSET_VAR}"},
            "remote",
            "agents.a.credentials.remote.headers.Authorization",
            "UNSET_VAR is not set",
        ),
        (
            {"X-Key": "${file:missing.token}"},
            "remote",
            "agents.a.credentials.remote.headers.X-Key",
            "missing.token' cannot be read",
        ),
        ({"Bad Name": "v"}, "remote", "agents.a.credentials.remote.headers.Bad Name", "should match pattern"),
        ({"X-Key": "a\r\nX-Injected: 1"}, "remote", "agents.a.credentials.remote.headers", "line break"),
        ({"X-Key": " "}, "remote", "agents.a.credentials.remote.headers", "is empty"),
        ({}, "remote", "agents.a.credentials.remote", "needs 'headers' or 'oauth'"),
        ({"X-Key": "v"}, "local", "agents.a.credentials.local", "stdio server"),
    ],
)
def test_bad_credentials_name_where_and_why_never_the_value(
    tmp_path: Path, headers: dict[str, Any], server: str, path: str, reason: str
) -> None:
    rules = write(tmp_path / "r.json", credentials_rules(headers, server))
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path / "s.json", CREDENTIAL_SERVERS), rules)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert "X-Injected" not in str(caught.value)


def test_credentials_for_an_unknown_server_are_a_warning(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.json", credentials_rules({"X-Key": "v"}, "gone"))
    loaded = load(write(tmp_path / "s.json", CREDENTIAL_SERVERS), rules)
    assert "agents.a.credentials.gone: no such server in the servers file" in loaded.warnings


def test_per_agent_credentials_are_for_http_servers(tmp_path: Path) -> None:
    path = write(tmp_path / "s.json", server(command="x", credentials="per-agent"))
    with pytest.raises(ConfigError, match="'credentials' are headers for 'url' servers"):
        load_mcp_config(path)
