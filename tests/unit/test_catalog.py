"""An agent's aggregate view (catalog.py `Catalog`) over downstream caches of the test's own: no
server, no pool of processes, only what the view computes from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest

from agent_mcp_gateway.access.pins import PINS_NAME, PinStore
from agent_mcp_gateway.access.policy import PolicyEngine
from agent_mcp_gateway.catalog import Catalog, public_name
from agent_mcp_gateway.config import RulesConfig, ServerConfig
from agent_mcp_gateway.downstream.pool import Owner


@dataclass
class Cached:
    """What a `Downstream` holds of its server's catalog (and the pins its tools pass: none
    pinned here, so none quarantined)."""

    tools: dict[str, mt.Tool] = field(default_factory=dict)
    prompts: dict[str, mt.Prompt] = field(default_factory=dict)
    resources: dict[str, mt.Resource] = field(default_factory=dict)
    templates: list[mt.ResourceTemplate] = field(default_factory=list)
    pins: PinStore = field(default_factory=lambda: PinStore(Path("unused") / PINS_NAME))
    owner: str = ""  # the shared session's


class Pool:
    def __init__(self, downstreams: dict[str, Cached]) -> None:
        self.downstreams = downstreams

    def get(self, name: str) -> Cached | None:
        return self.downstreams.get(name)

    def listing(self, name: str, owner: Owner) -> Cached | None:
        """Where an agent reads a server's lists: here, one cache per server for every agent."""
        return self.downstreams.get(name)


def tools(*names: str, description: str = "") -> dict[str, mt.Tool]:
    return {
        name: mt.Tool(name=name, description=description, input_schema={"type": "object"}) for name in names
    }


RULES: dict[str, Any] = {
    "agents": {
        "all": {"allow": {"servers": ["*"]}},
        "narrow": {
            "allow": {"servers": ["db", "bare"], "tools": {"db": ["query"]}},
            "deny": {"tools": {"bare": ["drop"]}},
        },
    }
}


def server(prefix: str | None = None) -> ServerConfig:
    return ServerConfig(command="true", prefix=prefix)


def catalog(
    agent: str,
    downstreams: dict[str, Cached],
    servers: dict[str, ServerConfig] | None = None,
    rules: dict[str, Any] = RULES,
) -> Catalog:
    configs = servers if servers is not None else {name: server() for name in downstreams}
    engine = PolicyEngine(RulesConfig.model_validate(rules))
    return Catalog(configs, engine, Pool(downstreams), agent)  # type: ignore[arg-type]


@pytest.fixture
def downstreams() -> dict[str, Cached]:
    return {
        "db": Cached(
            tools=tools("query", "drop"),
            prompts={"report": mt.Prompt(name="report")},
            resources={"db://tables": mt.Resource(uri="db://tables", name="tables")},
            templates=[mt.ResourceTemplate(uri_template="db://tables/{name}", name="table")],
        ),
        "bare": Cached(tools=tools("search", "drop")),
        "files": Cached(
            tools=tools("read"),
            resources={"db://tables": mt.Resource(uri="db://tables", name="shadowed")},
            templates=[mt.ResourceTemplate(uri_template="file:///{path}", name="file")],
        ),
    }


def test_public_names() -> None:
    assert public_name("db", "query") == "db__query"
    assert public_name("", "query") == "query"


def test_tools_are_the_allowed_ones_under_their_public_names(downstreams: dict[str, Cached]) -> None:
    servers = {"db": server(), "bare": server(prefix=""), "files": server(prefix="fs")}
    everything = catalog("all", downstreams, servers).tools()
    assert list(everything) == ["db__query", "db__drop", "search", "drop", "fs__read"]
    assert (everything["fs__read"].server, everything["fs__read"].name) == ("files", "read")
    narrow = catalog("narrow", downstreams, servers).tools()
    assert list(narrow) == ["db__query", "search"]  # db's allow list, bare's deny, no files


def test_a_configured_server_missing_from_the_pool_is_skipped(downstreams: dict[str, Cached]) -> None:
    servers = {"gone": server(), **{name: server() for name in downstreams}}
    assert "gone" not in {routed.server for routed in catalog("all", downstreams, servers).tools().values()}


def test_a_name_two_servers_give_belongs_to_the_first_with_a_warning(
    downstreams: dict[str, Cached], caplog: pytest.LogCaptureFixture
) -> None:
    servers = {"db": server(prefix=""), "bare": server(prefix="")}
    with caplog.at_level(logging.WARNING, logger="agent_mcp_gateway.catalog"):
        view = catalog("all", downstreams, servers).tools()
    assert view["drop"].server == "db"
    (record,) = [r for r in caplog.records if "collision" in r.getMessage()]
    assert (record.public_name, record.server, record.hidden_server) == ("drop", "db", "bare")  # type: ignore[attr-defined]


def test_a_public_name_leads_back_to_its_server_and_tool(downstreams: dict[str, Cached]) -> None:
    servers = {"db": server(), "bare": server(prefix="")}
    view = catalog("all", downstreams, servers)
    routed = view.tool("db__query")
    assert routed is not None and (routed.server, routed.name) == ("db", "query")
    bare = view.tool("search")
    assert bare is not None and (bare.server, bare.name) == ("bare", "search")
    assert view.tool("db__nothing") is None
    assert view.tool("nope__query") is None


def test_a_denied_tool_is_unknown_even_where_a_bare_server_has_the_name(
    downstreams: dict[str, Cached],
) -> None:
    # `db__drop` is denied for nobody here, `bare`'s `drop` is denied for narrow: the prefixed
    # candidate comes first, and a denied tool is not looked for further.
    downstreams["bare"].tools.update(tools("db__query"))
    servers = {"db": server(), "bare": server(prefix="")}
    narrow = catalog("narrow", downstreams, servers)
    assert narrow.tool("drop") is None  # bare's drop is denied
    assert narrow.tool("db__drop") is None  # not in db's allow list
    routed = narrow.tool("db__query")
    assert routed is not None and routed.server == "db"


def test_candidates_prefixed_first_then_bare_servers(downstreams: dict[str, Cached]) -> None:
    servers = {"db": server(), "bare": server(prefix=""), "files": server(prefix="")}
    view = catalog("narrow", downstreams, servers)
    # A bare server's name shaped like another server's public name is never routed (it would
    # shadow that server's tool); one whose head is no server's prefix goes to the bare servers.
    assert list(view.candidates("db__query")) == [("db", "query")]
    assert list(view.candidates("nobody__query")) == [("bare", "nobody__query")]
    assert list(view.candidates("read")) == [("bare", "read")]  # files is not narrow's
    assert list(view.candidates("read", every=True)) == [("bare", "read"), ("files", "read")]


def test_prompts_route_like_tools(downstreams: dict[str, Cached]) -> None:
    view = catalog("all", downstreams)
    assert list(view.prompts()) == ["db__report"]
    routed = view.prompt("db__report")
    assert routed is not None and (routed.server, routed.name) == ("db", "report")
    assert view.prompt("report") is None
    assert catalog("narrow", downstreams).prompt("db__report") is not None  # prompts follow server rules


def test_a_uri_belongs_to_the_first_server_listing_it_else_to_a_matching_template(
    downstreams: dict[str, Cached],
) -> None:
    view = catalog("all", downstreams)
    resources = view.resources()
    assert list(resources) == ["db://tables"] and resources["db://tables"].item.name == "tables"
    assert view.resource_server("db://tables") == "db"
    assert view.resource_server("db://tables/users") == "db"
    assert view.resource_server("file:///hosts") == "files"
    assert view.resource_server("other://x") is None
    assert catalog("narrow", downstreams).resource_server("file:///hosts") is None
    assert [t.server for t in view.templates()] == ["db", "files"]


def test_the_fingerprint_changes_with_what_the_agent_sees_and_only_then(
    downstreams: dict[str, Cached],
) -> None:
    before = {
        kind: catalog("narrow", downstreams).fingerprint(kind) for kind in ("tools", "prompts", "resources")
    }
    downstreams["files"].tools.update(tools("write"))  # narrow does not see files
    downstreams["db"].tools.update(tools("vacuum"))  # nor db's other tools
    assert {kind: catalog("narrow", downstreams).fingerprint(kind) for kind in before} == before
    downstreams["db"].tools["query"] = tools("query", description="now documented")["query"]
    assert catalog("narrow", downstreams).fingerprint("tools") != before["tools"]
    downstreams["db"].templates.append(mt.ResourceTemplate(uri_template="db://views/{name}", name="view"))
    assert catalog("narrow", downstreams).fingerprint("resources") != before["resources"]
    assert catalog("narrow", downstreams).fingerprint("prompts") == before["prompts"]
    assert catalog("all", downstreams).fingerprint("tools") != catalog("narrow", downstreams).fingerprint(
        "tools"
    )
