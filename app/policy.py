"""The policy engine: which agent may use which server and tool, and which rule said so.

Every pattern is compiled once when a configuration is loaded. A `PolicyEngine` is immutable:
a reload builds a new one and the gateway swaps the reference, so the hot path takes no lock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import translate

from .config import AgentRules, RulesConfig
from .errors import DeniedByPolicy, InvalidAgentId

DEFAULT_AGENT_ENV = "GATEWAY_DEFAULT_AGENT"
DEFAULT_DENY = "default-deny"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str


class _Patterns:
    """A list of globs matched as one regex; the index of the first match names the rule."""

    __slots__ = ("_any", "_each", "path")

    def __init__(self, patterns: Sequence[str], path: str) -> None:
        self.path = path
        self._each = [re.compile(translate(p)) for p in patterns]
        # One alternation rejects a miss in a single C-level scan; only a hit pays for
        # finding which entry matched.
        joined = "|".join(f"(?:{translate(p)})" for p in patterns)
        self._any = re.compile(joined) if patterns else None

    def first(self, name: str) -> str | None:
        if self._any is None or self._any.match(name) is None:
            return None
        for index, pattern in enumerate(self._each):
            if pattern.match(name):
                return f"{self.path}[{index}]"
        return None


class _ToolPatterns:
    """`tools` maps a server glob to tool globs; a server can be named by several keys."""

    __slots__ = ("_by_server",)

    def __init__(self, tools: dict[str, Sequence[str]], path: str) -> None:
        self._by_server = [
            (re.compile(translate(server)), _Patterns(patterns, f"{path}.{server}"))
            for server, patterns in tools.items()
        ]

    def lists_for(self, server: str) -> list[_Patterns]:
        return [patterns for key, patterns in self._by_server if key.match(server)]


@dataclass(frozen=True, slots=True)
class _Agent:
    deny_servers: _Patterns
    deny_tools: _ToolPatterns
    allow_servers: _Patterns
    allow_tools: _ToolPatterns

    @classmethod
    def compile(cls, agent_id: str, rules: AgentRules) -> _Agent:
        base = f"agents.{agent_id}"
        return cls(
            _Patterns(rules.deny.servers, f"{base}.deny.servers"),
            _ToolPatterns(rules.deny.tools, f"{base}.deny.tools"),
            _Patterns(rules.allow.servers, f"{base}.allow.servers"),
            _ToolPatterns(rules.allow.tools, f"{base}.allow.tools"),
        )


class PolicyEngine:
    def __init__(self, rules: RulesConfig, default_agent: str | None = None) -> None:
        self.rules = rules
        self._agents = {name: _Agent.compile(name, agent) for name, agent in rules.agents.items()}
        self._fallback = self._fallback_agent(rules, default_agent)

    @staticmethod
    def _fallback_agent(rules: RulesConfig, default_agent: str | None) -> str | None:
        if rules.defaults.deny_on_missing_agent:
            return None
        chosen = default_agent if default_agent is not None else os.environ.get(DEFAULT_AGENT_ENV)
        if chosen:
            return chosen if chosen in rules.agents else None
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
        rule = agent.deny_servers.first(server)
        if rule:
            return Decision(False, rule)
        if tool is not None:
            for patterns in agent.deny_tools.lists_for(server):
                rule = patterns.first(tool)
                if rule:
                    return Decision(False, rule)
        server_rule = agent.allow_servers.first(server)
        if server_rule is None:
            return Decision(False, DEFAULT_DENY)
        if tool is None:
            return Decision(True, server_rule)
        tool_lists = agent.allow_tools.lists_for(server)
        if not tool_lists:
            return Decision(True, server_rule)
        for patterns in tool_lists:
            rule = patterns.first(tool)
            if rule:
                return Decision(True, rule)
        return Decision(False, tool_lists[0].path)

    def check(
        self,
        agent_id: str,
        operation: str,
        server: str,
        tool: str | None = None,
    ) -> Decision:
        """Like `decide`, but a denial raises DENIED_BY_POLICY carrying the rule."""
        decision = self.decide(agent_id, server, tool)
        if not decision.allowed:
            raise DeniedByPolicy(agent_id, operation, server, tool, decision.rule)
        return decision

    def visible_servers(self, agent_id: str, servers: Sequence[str]) -> list[str]:
        return [name for name in servers if self.decide(agent_id, name).allowed]

