"""The policy engine against the decision order in the spec, rule path included."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_mcp_gateway.access.policy import DEFAULT_DENY, Decision, PolicyEngine
from agent_mcp_gateway.config import RulesConfig
from agent_mcp_gateway.errors import DeniedByPolicy, InvalidAgentId

RULES: dict[str, Any] = {
    "agents": {
        "backend": {
            "allow": {"servers": ["db", "files"]},
            "deny": {"tools": {"db": ["drop_*", "delete_*"]}},
        },
        "researcher": {
            "allow": {
                "servers": ["search", "browser_*"],
                "tools": {"search": ["web_*", "get_*_all"]},
            },
        },
        "everything": {"allow": {"servers": ["*"]}, "deny": {"servers": ["notion"]}},
        "globber": {
            "allow": {"servers": ["db?", "cache[ab]", "[!x]ray"], "tools": {"db?": ["q[0-9]"]}},
        },
        "contradicts": {"allow": {"servers": ["files"]}, "deny": {"servers": ["fil*"]}},
        "nothing": {},
    },
}


def engine(rules: dict[str, Any] = RULES) -> PolicyEngine:
    return PolicyEngine(RulesConfig.model_validate(rules))


CASES: list[tuple[str, str, str | None, bool, str]] = [
    # step 2: deny.servers, deny.tools[S]; a deny beats any allow
    ("everything", "notion", None, False, "agents.everything.deny.servers[0]"),
    ("everything", "notion", "search", False, "agents.everything.deny.servers[0]"),
    ("contradicts", "files", "read", False, "agents.contradicts.deny.servers[0]"),
    ("backend", "db", "drop_table", False, "agents.backend.deny.tools.db[0]"),
    ("backend", "db", "delete_row", False, "agents.backend.deny.tools.db[1]"),
    # a tool deny does not hide the server itself
    ("backend", "db", None, True, "agents.backend.allow.servers[0]"),
    # step 3: no allow.servers pattern matches
    ("backend", "search", None, False, DEFAULT_DENY),
    ("backend", "search", "web_search", False, DEFAULT_DENY),
    ("nothing", "db", None, False, DEFAULT_DENY),
    ("everything", "anything-else", "x", True, "agents.everything.allow.servers[0]"),
    # step 4: allow.tools[S] restricts the server's tools
    ("researcher", "search", "web_fetch", True, "agents.researcher.allow.tools.search[0]"),
    ("researcher", "search", "get_news_all", True, "agents.researcher.allow.tools.search[1]"),
    ("researcher", "search", "get__all", True, "agents.researcher.allow.tools.search[1]"),
    ("researcher", "search", "get_all", False, "agents.researcher.allow.tools.search"),
    ("researcher", "search", "get_news_all_x", False, "agents.researcher.allow.tools.search"),
    ("researcher", "search", "delete", False, "agents.researcher.allow.tools.search"),
    ("researcher", "search", None, True, "agents.researcher.allow.servers[0]"),
    # step 5: an allowed server with no tool list grants all its tools
    ("backend", "files", "anything", True, "agents.backend.allow.servers[1]"),
    ("backend", "db", "select", True, "agents.backend.allow.servers[0]"),
    ("researcher", "browser_chrome", "click", True, "agents.researcher.allow.servers[1]"),
    # globs: server `browser_*`, `?`, `[...]`, `[!...]`, and tool lists keyed by a glob
    ("researcher", "browser_", None, True, "agents.researcher.allow.servers[1]"),
    ("researcher", "browser", None, False, DEFAULT_DENY),
    ("globber", "db1", None, True, "agents.globber.allow.servers[0]"),
    ("globber", "db", None, False, DEFAULT_DENY),
    ("globber", "db12", None, False, DEFAULT_DENY),
    ("globber", "cacheb", None, True, "agents.globber.allow.servers[1]"),
    ("globber", "cachec", None, False, DEFAULT_DENY),
    ("globber", "gray", None, True, "agents.globber.allow.servers[2]"),
    ("globber", "xray", None, False, DEFAULT_DENY),
    ("globber", "db1", "q7", True, "agents.globber.allow.tools.db?[0]"),
    ("globber", "db1", "q77", False, "agents.globber.allow.tools.db?"),
    # matching is case-sensitive everywhere
    ("backend", "DB", None, False, DEFAULT_DENY),
    ("backend", "db", "DROP_table", True, "agents.backend.allow.servers[0]"),
    ("researcher", "search", "Web_fetch", False, "agents.researcher.allow.tools.search"),
    ("everything", "Notion", None, True, "agents.everything.allow.servers[0]"),
]


@pytest.mark.parametrize(("agent", "server", "tool", "allowed", "rule"), CASES)
def test_decision(agent: str, server: str, tool: str | None, allowed: bool, rule: str) -> None:
    assert engine().decide(agent, server, tool) == Decision(allowed, rule)


def test_repeated_decisions_on_one_engine_agree() -> None:
    """The engine caches per-server answers; asking again, in any order, changes nothing."""
    policy = engine()
    for case in [*CASES, *reversed(CASES), *CASES]:
        agent, server, tool, allowed, rule = case
        assert policy.decide(agent, server, tool) == Decision(allowed, rule), case


@pytest.mark.parametrize("agent", ["ghost", "Backend", "backend "])
def test_unknown_explicit_agent_is_invalid(agent: str) -> None:
    policy = engine()
    with pytest.raises(InvalidAgentId) as raised:
        policy.resolve_agent(agent)
    assert raised.value.fields["reason"] == f"agent '{agent}' is not configured"
    with pytest.raises(InvalidAgentId):
        policy.decide(agent, "db")


def test_known_agent_resolves_to_itself() -> None:
    assert engine().resolve_agent("backend") == "backend"


def test_deny_servers_hides_server_from_visible_servers() -> None:
    policy = engine()
    servers = ["db", "notion", "files", "search"]
    assert policy.visible_servers("everything", servers) == ["db", "files", "search"]
    assert policy.visible_servers("backend", servers) == ["db", "files"]
    assert policy.visible_servers("nothing", servers) == []


def test_check_raises_denied_with_rule() -> None:
    policy = engine()
    assert policy.check("backend", "execute_tool", "db", "select").allowed
    with pytest.raises(DeniedByPolicy) as raised:
        policy.check("backend", "execute_tool", "db", "drop_table")
    assert raised.value.data == {
        "code": "DENIED_BY_POLICY",
        "agent_id": "backend",
        "operation": "execute_tool",
        "server": "db",
        "tool": "drop_table",
        "rule": "agents.backend.deny.tools.db[0]",
    }


# --- missing agent id -------------------------------------------------------------------------


def rules_with(deny_on_missing_agent: bool | None, *agents: str) -> dict[str, Any]:
    rules: dict[str, Any] = {"agents": {name: {"allow": {"servers": [name]}} for name in agents}}
    if deny_on_missing_agent is not None:
        rules["defaults"] = {"deny_on_missing_agent": deny_on_missing_agent}
    return rules


@pytest.mark.parametrize("missing", [None, ""])
@pytest.mark.parametrize(
    ("deny_on_missing_agent", "agents", "env", "expected"),
    [
        # absent defaults mean deny_on_missing_agent: true, even with a `default` agent
        (None, ("default",), None, None),
        (True, ("default", "backend"), "backend", None),
        (False, ("default", "backend"), "backend", "backend"),
        (False, ("default", "backend"), None, "default"),
        (False, ("backend",), None, None),
        # GATEWAY_DEFAULT_AGENT must name a configured agent; it never falls through
        (False, ("default", "backend"), "ghost", None),
    ],
)
def test_missing_agent(
    missing: str | None,
    deny_on_missing_agent: bool | None,
    agents: tuple[str, ...],
    env: str | None,
    expected: str | None,
) -> None:
    policy = PolicyEngine(RulesConfig.model_validate(rules_with(deny_on_missing_agent, *agents)), env)
    if expected is None:
        with pytest.raises(InvalidAgentId):
            policy.resolve_agent(missing)
    else:
        assert policy.resolve_agent(missing) == expected
        assert policy.decide(expected, expected) == Decision(True, f"agents.{expected}.allow.servers[0]")


# --- property: deny always wins, allow needs an allow.servers match ---------------------------

token = st.sampled_from(["a", "b", "c", "*", "?", "[ab]", "[!a]"])
pattern = st.lists(token, min_size=1, max_size=4).map("".join)
patterns = st.lists(pattern, max_size=3)
name = st.text(alphabet="abc", min_size=1, max_size=5)
rule_set = st.fixed_dictionaries(
    {"servers": patterns, "tools": st.dictionaries(pattern, patterns, max_size=2)}
)


def oracle(rules: dict[str, Any], server: str, tool: str | None) -> Decision:
    """The spec's decision order and rule paths, written independently with fnmatchcase."""
    allow, deny = rules["allow"], rules["deny"]

    def first(patterns: list[str], name: str, path: str) -> str | None:
        return next((f"{path}[{i}]" for i, p in enumerate(patterns) if fnmatchcase(name, p)), None)

    def tool_rule(kind: str, tools: dict[str, list[str]]) -> str | None:
        for key, patterns in tools.items():
            if fnmatchcase(server, key):
                rule = first(patterns, tool or "", f"agents.a.{kind}.tools.{key}")
                if rule:
                    return rule
        return None

    rule = first(deny["servers"], server, "agents.a.deny.servers")
    if rule:
        return Decision(False, rule)
    if tool is not None:
        rule = tool_rule("deny", deny["tools"])
        if rule:
            return Decision(False, rule)
    server_rule = first(allow["servers"], server, "agents.a.allow.servers")
    if server_rule is None:
        return Decision(False, "default-deny")
    keys = [key for key in allow["tools"] if fnmatchcase(server, key)]
    if tool is None or not keys:
        return Decision(True, server_rule)
    rule = tool_rule("allow", allow["tools"])
    return Decision(True, rule) if rule else Decision(False, f"agents.a.allow.tools.{keys[0]}")


@settings(max_examples=400, deadline=None)
@given(allow=rule_set, deny=rule_set, server=name, tool=st.none() | name)
def test_policy_property(allow: dict[str, Any], deny: dict[str, Any], server: str, tool: str | None) -> None:
    agent = {"allow": allow, "deny": deny}
    decision = engine({"agents": {"a": agent}}).decide("a", server, tool)

    denied_by_pattern = any(fnmatchcase(server, p) for p in deny["servers"]) or (
        tool is not None
        and any(
            fnmatchcase(server, key) and any(fnmatchcase(tool, p) for p in tools)
            for key, tools in deny["tools"].items()
        )
    )
    if denied_by_pattern:
        assert not decision.allowed
        assert ".deny." in decision.rule
    if decision.allowed:
        assert any(fnmatchcase(server, p) for p in allow["servers"])
    assert decision == oracle(agent, server, tool)
