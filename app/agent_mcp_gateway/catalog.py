"""The aggregate view: the downstream tools, prompts and resources one agent may use, under
their public names, and the way back from a public name to its server.

Tools and prompts are named `{prefix}__{name}` (the prefix is the server's name unless the
server sets its own; "" gives bare names). Resources keep their URIs, which already name what
they are; a URI two servers offer belongs to the first in the servers file. Tools follow the
agent's tool rules; prompts and resources its server rules.

A name resolves to one server or to none, never onward to another: a quarantined or denied tool
keeps its public name from every later server, and a bare name shaped like another server's
public name (`{prefix}__...`) is never shown or routed (it would shadow that server's tool).

Each server's lists are the agent's own downstream session's once it is up (a server may list
differently per session), else the server's shared session's (`DownstreamPool.listing`).
A view is computed from the downstream caches on demand: listing is rare next to calling, and
a call routes by the prefix without building a view.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import mcp_types as mt
from mcp.shared.uri_template import UriTemplate

from agent_mcp_gateway.access.policy import Decision, PolicyEngine
from agent_mcp_gateway.config import NAME_SEPARATOR, ServerConfig
from agent_mcp_gateway.downstream.pool import DownstreamPool, Owner
from agent_mcp_gateway.downstream.session import Downstream
from agent_mcp_gateway.protocol import TASKS_EXTENSION, Kind

log = logging.getLogger("agent_mcp_gateway.catalog")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """A downstream item and where it lives: its server and its name there."""

    server: str
    name: str
    item: T
    decision: Decision | None = None  # the policy decision that admitted it, where one was made


def public_name(prefix: str, name: str) -> str:
    return f"{prefix}{NAME_SEPARATOR}{name}" if prefix else name


class Catalog:
    """One agent's aggregate view over one configuration and the live pool."""

    def __init__(
        self, servers: dict[str, ServerConfig], engine: PolicyEngine, pool: DownstreamPool, agent_id: str
    ) -> None:
        self.servers = servers
        self.engine = engine
        self.pool = pool
        self.agent_id = agent_id
        self.owner = Owner(agent_id)
        self._prefixes = {config.public_prefix(name) for name, config in servers.items()} - {""}

    def _reserved(self, bare: str) -> bool:
        """Whether a bare name is shaped like another server's public name."""
        head, separator, _ = bare.partition(NAME_SEPARATOR)
        return bool(separator) and head in self._prefixes

    def _servers(self) -> Iterator[tuple[str, str, Downstream]]:
        """(name, prefix, downstream) of each server the agent may use, in file order."""
        servers = self.servers
        for name in self.engine.visible_servers(self.agent_id, list(servers)):
            downstream = self.pool.listing(name, self.owner)
            if downstream is not None:
                yield name, servers[name].public_prefix(name), downstream

    def tools(self) -> dict[str, Routed[mt.Tool]]:
        engine = self.engine
        named: dict[str, Routed[mt.Tool]] = {}
        taken: set[str] = set()  # names a denied or quarantined tool keeps from later servers
        for server, prefix, downstream in self._servers():
            for name in downstream.pins.quarantined_tools(server, downstream.owner):
                taken.add(public_name(prefix, name))
            for tool in downstream.tools.values():
                public = public_name(prefix, tool.name)
                if public in taken or (not prefix and self._reserved(tool.name)):
                    continue
                if engine.decide(self.agent_id, server, tool.name).allowed:
                    _add(named, public, Routed(server, tool.name, tool))
                else:
                    taken.add(public)
        return named

    def prompts(self) -> dict[str, Routed[mt.Prompt]]:
        named: dict[str, Routed[mt.Prompt]] = {}
        for server, prefix, downstream in self._servers():
            for prompt in downstream.prompts.values():
                if not prefix and self._reserved(prompt.name):
                    continue
                _add(named, public_name(prefix, prompt.name), Routed(server, prompt.name, prompt))
        return named

    def resources(self) -> dict[str, Routed[mt.Resource]]:
        by_uri: dict[str, Routed[mt.Resource]] = {}
        for server, _, downstream in self._servers():
            for uri, resource in downstream.resources.items():
                _add(by_uri, uri, Routed(server, uri, resource))
        return by_uri

    def templates(self) -> list[Routed[mt.ResourceTemplate]]:
        """The agent's resource templates; a template two servers offer belongs to the first."""
        by_template: dict[str, Routed[mt.ResourceTemplate]] = {}
        for server, _, downstream in self._servers():
            for template in downstream.templates:
                _add(by_template, template.uri_template, Routed(server, template.uri_template, template))
        return list(by_template.values())

    def tool(self, name: str) -> Routed[mt.Tool] | None:
        """The tool a public name stands for, with the decision that allows it, if the agent
        may call it (else None: unknown). The decision travels on, so it is not made twice."""
        for server, downstream_name in self.candidates(name):
            downstream = self.pool.listing(server, self.owner)
            if downstream is None:
                continue
            if downstream.pins.quarantined(server, downstream_name, downstream.owner):
                return None  # its name is not handed on to another server
            tool = downstream.tools.get(downstream_name)
            if tool is not None:
                decision = self.engine.decide(self.agent_id, server, downstream_name)
                return Routed(server, downstream_name, tool, decision) if decision.allowed else None
        return None

    def prompt(self, name: str) -> Routed[mt.Prompt] | None:
        for server, downstream_name in self.candidates(name):
            downstream = self.pool.listing(server, self.owner)
            prompt = downstream.prompts.get(downstream_name) if downstream is not None else None
            if prompt is not None:
                return Routed(server, downstream_name, prompt)
        return None

    def resource_server(self, uri: str) -> str | None:
        """The server that serves `uri`: one that lists it, else one whose template matches."""
        servers = list(self._servers())
        for server, _, downstream in servers:
            if uri in downstream.resources:
                return server
        for server, _, downstream in servers:
            for template in downstream.templates:
                if _matches(template.uri_template, uri):
                    return server
        return None

    def candidates(self, name: str, every: bool = False) -> Iterator[tuple[str, str]]:
        """(server, name there) pairs a public name can stand for, the prefixed one first;
        among the servers the agent may use, or among all of them with `every`."""
        if every:
            named = [(server, config.public_prefix(server)) for server, config in self.servers.items()]
        else:
            named = [(server, prefix) for server, prefix, _ in self._servers()]
        if NAME_SEPARATOR in name:
            head, rest = name.split(NAME_SEPARATOR, 1)
            for server, prefix in named:
                if prefix == head:
                    yield server, rest
        if self._reserved(name):
            return  # another server's public name: never a bare server's
        for server, prefix in named:
            if prefix == "":
                yield server, name

    def extensions(self) -> dict[str, dict[str, Any]]:
        """The extensions the agent's servers declare (SEP-2133), merged: an extension two
        servers declare keeps the first one's settings, in file order. The tasks extension is
        left out: the gateway does not relay it (`server.tasks`)."""
        merged: dict[str, dict[str, Any]] = {}
        for _, _, downstream in self._servers():
            for identifier, settings in downstream.extensions().items():
                if identifier != TASKS_EXTENSION:
                    merged.setdefault(identifier, settings)
        return merged

    def fingerprint(self, kind: Kind) -> str:
        """A digest of what this agent sees of one kind, to tell whether it changed."""
        if kind == "tools":
            items: list[object] = [
                (name, routed.item.model_dump(mode="json")) for name, routed in self.tools().items()
            ]
        elif kind == "prompts":
            items = [(name, routed.item.model_dump(mode="json")) for name, routed in self.prompts().items()]
        else:
            items = [(uri, routed.item.model_dump(mode="json")) for uri, routed in self.resources().items()]
            items += [routed.item.model_dump(mode="json") for routed in self.templates()]
        encoded = json.dumps(items, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()


def _add(named: dict[str, Routed[T]], key: str, routed: Routed[T]) -> None:
    other = named.setdefault(key, routed)
    if other is not routed:
        log.warning(
            "aggregate view name collision; the first server keeps the name",
            # Not "name": a LogRecord attribute, which logging refuses to overwrite (KeyError).
            extra={"public_name": key, "server": other.server, "hidden_server": routed.server},
        )


def _matches(template: str, uri: str) -> bool:
    try:
        return UriTemplate.parse(template).match(uri) is not None
    except ValueError:
        return False
