"""The policy engine: which agent may use which server and tool, and which rule said so.

Every pattern is compiled once when a configuration is loaded. A `PolicyEngine` is immutable:
a reload builds a new one and the gateway swaps the reference, so the hot path takes no lock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate
from functools import lru_cache

from agent_mcp_gateway.config import AgentRules, RulesConfig
from agent_mcp_gateway.errors import DeniedByPolicy, InvalidAgentId

DEFAULT_DENY = "default-deny"
SERVER_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str


class _Patterns:
    """A list of globs matched as one regex; the first entry that matches names the rule."""

    __slots__ = ("_regex", "_rules", "path")

    def __init__(self, patterns: Sequence[str], path: str) -> None:
        self.path = path
        self._rules = {f"p{index}": f"{path}[{index}]" for index in range(len(patterns))}
        # One alternation of named groups: a single C-level scan finds the first pattern that
        # matches (alternatives are tried in order), and the group's name says which.
        joined = "|".join(f"(?P<p{index}>{translate(p)})" for index, p in enumerate(patterns))
        self._regex = re.compile(joined) if patterns else None

    def first(self, name: str) -> str | None:
        if self._regex is None:
            return None
        match = self._regex.match(name)
        return self._rules[match.lastgroup] if match and match.lastgroup else None


class _ToolPatterns:
    """`tools` maps a server glob to tool globs; a server can be named by several keys."""

    __slots__ = ("_any", "_by_server")

    def __init__(self, tools: Mapping[str, Sequence[str]], path: str) -> None:
        self._by_server = [
            (re.compile(translate(server)), _Patterns(patterns, f"{path}.{server}"))
            for server, patterns in tools.items()
        ]
        # Most servers match no key at all: one scan says so without trying each key.
        self._any = re.compile("|".join(translate(server) for server in tools)) if tools else None

    def lists_for(self, server: str) -> tuple[_Patterns, ...]:
        if self._any is None or self._any.match(server) is None:
            return ()
        return tuple([patterns for key, patterns in self._by_server if key.match(server)])


@dataclass(frozen=True, slots=True)
class _ServerView:
    """What one agent's rules say about one server, before any tool is considered."""

    decision: Decision  # deny.servers, else allow.servers, else default-deny
    denied_server: bool
    deny_tools: tuple[_Patterns, ...]
    allow_tools: tuple[_Patterns, ...]
    tool_not_listed: Decision | None


class _Agent:
    """One agent's compiled rules, with its per-server answers cached.

    Requests name the same few servers over and over, so the server half of a decision is
    worked out once per server name; the cache is bounded because agents may invent names.
    """

    __slots__ = ("view",)

    def __init__(self, agent_id: str, rules: AgentRules) -> None:
        base = f"agents.{agent_id}"
        deny_servers = _Patterns(rules.deny.servers, f"{base}.deny.servers")
        deny_tools = _ToolPatterns(rules.deny.tools, f"{base}.deny.tools")
        allow_servers = _Patterns(rules.allow.servers, f"{base}.allow.servers")
        allow_tools = _ToolPatterns(rules.allow.tools, f"{base}.allow.tools")

        @lru_cache(maxsize=SERVER_CACHE_SIZE)
        def view(server: str) -> _ServerView:
            denied = deny_servers.first(server)
            if denied:
                return _ServerView(Decision(False, denied), True, (), (), None)
            allowed = allow_servers.first(server)
            if allowed is None:
                # deny.tools still comes first in the order, so a tool it names reports it.
                return _ServerView(
                    Decision(False, DEFAULT_DENY), False, deny_tools.lists_for(server), (), None
                )
            tool_lists = allow_tools.lists_for(server)
            return _ServerView(
                Decision(True, allowed),
                False,
                deny_tools.lists_for(server),
                tool_lists,
                Decision(False, tool_lists[0].path) if tool_lists else None,
            )

        self.view = view


class PolicyEngine:
    def __init__(self, rules: RulesConfig, default_agent: str | None = None) -> None:
        self.rules = rules
        self._agents = {name: _Agent(name, agent) for name, agent in rules.agents.items()}
        self._fallback = self._fallback_agent(rules, default_agent)

    @staticmethod
    def _fallback_agent(rules: RulesConfig, default_agent: str | None) -> str | None:
        if rules.defaults.deny_on_missing_agent:
            return None
        if default_agent:
            return default_agent if default_agent in rules.agents else None
        return "default" if "default" in rules.agents else None

    @property
    def agent_ids(self) -> list[str]:
        return list(self._agents)

    def resolve_agent(self, agent_id: str | None) -> str:
        """The agent a request acts as; raises INVALID_AGENT_ID when there is none."""
        if agent_id is None or agent_id == "":
            if self.rules.defaults.deny_on_missing_agent:
                raise InvalidAgentId("agent_id is required by this gateway's policy")
            if self._fallback is None:
                raise InvalidAgentId("agent_id is missing and no default agent is configured")
            return self._fallback
        if agent_id not in self._agents:
            raise InvalidAgentId(f"agent '{agent_id}' is not configured")
        return agent_id

    def decide(self, agent_id: str, server: str, tool: str | None = None) -> Decision:
        """Apply the decision order: unknown agent, deny, allow.servers, allow.tools, allow."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise InvalidAgentId(f"agent '{agent_id}' is not configured")
        view = agent.view(server)
        if tool is None or view.denied_server:
            return view.decision
        for patterns in view.deny_tools:
            rule = patterns.first(tool)
            if rule:
                return Decision(False, rule)
        if view.tool_not_listed is None or not view.decision.allowed:
            return view.decision
        for patterns in view.allow_tools:
            rule = patterns.first(tool)
            if rule:
                return Decision(True, rule)
        return view.tool_not_listed

    def check(
        self,
        agent_id: str,
        operation: str,
        server: str,
        tool: str | None = None,
    ) -> Decision:
        """Like `decide`, but a denial raises DENIED_BY_POLICY carrying the rule. The caller
        records the decision (span, audit): the engine stays pure."""
        decision = self.decide(agent_id, server, tool)
        if not decision.allowed:
            raise DeniedByPolicy(agent_id, operation, server, tool, decision.rule)
        return decision

    def visible_servers(self, agent_id: str, servers: Sequence[str]) -> list[str]:
        return [name for name in servers if self.decide(agent_id, name).allowed]
