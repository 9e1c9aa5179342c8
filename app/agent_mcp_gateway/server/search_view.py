"""search_tools over the live catalog: the pure index (`search.py`) kept in step with the
downstream sessions, and cut to what one agent may see.

One index holds every tool every downstream session lists (pins already keep quarantined
definitions out of those lists); it is rebuilt only when a definition appears that it does
not hold, reusing the terms and vectors of the definitions it already had. Each agent searches
a view of it: the tools of the servers it may use, as its own listing session lists them, that
its policy allows. A view is kept while the agent's listings (the very dicts a catalog load
replaces) and the configuration stay the same, so a search after a `list_changed`, a reconnect,
an approval or a reload sees the new catalog, and any other search costs only the ranking.

Sentence embeddings are computed off the event loop: while a new index's vectors are being
computed, searches rank the new catalog lexically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import mcp_types as mt

from agent_mcp_gateway.downstream.pool import Owner
from agent_mcp_gateway.downstream.session import Downstream
from agent_mcp_gateway.gateway import Gateway, Snapshot
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.server.search import Embedder, IndexView, ToolDoc, ToolIndex, default_embedder, summary

log = logging.getLogger("agent_mcp_gateway.search")

Detail = Literal["brief", "full"]
Health = Literal["up", "starting", "down", "circuit_open", "unknown"]
MAX_VIEWS = 1024  # agent views kept (one per agent, or per client session under session isolation)
HEALTH_NOTES: dict[str, str] = {
    "starting": "not connected yet: calls wait for it or fail with SERVER_UNAVAILABLE",
    "down": "down, being restarted: calls fail with SERVER_UNAVAILABLE until it is back",
    "circuit_open": "failing repeatedly: calls fail fast until a probe succeeds",
    "unknown": "not running",
}


def health(downstream: Downstream | None) -> Health:
    """A server's health as an agent should weigh it: a server whose circuit is open refuses
    calls even while connected."""
    if downstream is None:
        return "unknown"
    if downstream.circuit.state != "closed":
        return "circuit_open"
    if downstream.state == "up":
        return "up"
    return "starting" if downstream.state == "connecting" else "down"


def definition(tool: mt.Tool) -> dict[str, Any]:
    """A tool's definition as a client sees it in tools/list."""
    return tool.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True, slots=True)
class _View:
    snapshot: Snapshot
    listings: tuple[dict[str, mt.Tool], ...]  # held, so compared by identity safely
    index: ToolIndex
    view: IndexView


class ToolSearch:
    """Search over the gateway's live catalog, per agent."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.embedder: Embedder | None = None
        self._loading: asyncio.Task[None] | None = None
        self._index = ToolIndex([])
        self._vectored: ToolIndex | None = None  # the latest index with vectors, to reuse them
        self._embedding: asyncio.Task[None] | None = None
        self._docs: dict[tuple[str, int], tuple[mt.Tool, ToolDoc]] = {}
        self._views: OrderedDict[tuple[str, str | None], _View] = OrderedDict()

    def start(self) -> None:
        """Load the embedding model in the background (when enabled and installed): until it is
        loaded, searches are lexical."""
        if self.gateway.settings.search_embeddings and self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load_model())

    async def _load_model(self) -> None:
        started = time.perf_counter()
        try:
            embedder = await asyncio.to_thread(default_embedder)
        except Exception:  # a broken install: lexical search still works
            log.exception("the search embedding model failed to load; searching lexically")
            return
        if embedder is None:
            log.info("search is lexical: the optional embedding model (extra 'search') is not installed")
            return
        self.embedder = embedder
        self._views.clear()
        self._embed(self._index.docs)
        log.info("search embedding model loaded", extra={"seconds": round(time.perf_counter() - started, 3)})

    async def search(
        self, op: Operation, query: str, limit: int = 5, server: str | None = None, detail: Detail = "brief"
    ) -> dict[str, Any]:
        await self._first_lists(op)
        view = self._view(op)
        if view.index.embedder is None:
            hits = view.view.search(query, limit, server)
        else:  # encoding the query takes milliseconds of CPU: not on the event loop
            hits = await asyncio.to_thread(view.view.search, query, limit, server)
        pool = self.gateway.pool
        tools = []
        for hit in hits:
            entry: dict[str, Any] = {"server": hit.doc.server, "tool": hit.doc.name}
            if detail == "full":
                entry.update(_full(hit.doc.definition))
            else:
                entry["summary"] = summary(hit.doc.definition)
            state = health(pool.get(hit.doc.server))
            if state != "up":
                entry["health"] = state
            tools.append(entry)
        return {"tools": tools, "returned": len(tools)}

    async def _first_lists(self, op: Operation) -> None:
        """Wait for the servers `op`'s agent may use that are still making their first
        connection (bounded by the connect timeout), as get_server_tools does: a search right
        after start-up should not miss their tools."""
        snapshot = self.gateway.pinned(op)
        owner = Owner(op.agent_id, op.session_id)
        waiting = []
        for name in snapshot.engine.visible_servers(op.agent_id, list(snapshot.config.servers)):
            downstream = self.gateway.pool.listing(name, owner)
            if downstream is not None and downstream.state == "connecting":
                waiting.append(downstream.tried.wait())
        if waiting:
            await asyncio.gather(*waiting)

    def _view(self, op: Operation) -> _View:
        """`op`'s agent's view, made again only when its listings or configuration changed."""
        gateway = self.gateway
        snapshot = gateway.pinned(op)
        owner = Owner(op.agent_id, op.session_id)
        sources: list[tuple[str, dict[str, mt.Tool]]] = []
        for name in snapshot.engine.visible_servers(op.agent_id, list(snapshot.config.servers)):
            downstream = gateway.pool.listing(name, owner)
            if downstream is not None:
                sources.append((name, downstream.tools))
        listings = tuple(tools for _, tools in sources)
        key = (op.agent_id, op.session_id)
        cached = self._views.get(key)
        if (
            cached is not None
            and cached.snapshot is snapshot
            and cached.index is self._index
            and len(cached.listings) == len(listings)
            and all(a is b for a, b in zip(cached.listings, listings, strict=True))
        ):
            self._views.move_to_end(key)
            return cached
        engine = snapshot.engine
        allowed = {
            doc.key
            for server, tools in sources
            for doc in self._documents(server, tools.values())
            if engine.decide(op.agent_id, server, doc.name).allowed
        }
        if not allowed <= {doc.key for doc in self._index.docs}:
            self._rebuild()
        index = self._index
        made = _View(snapshot, listings, index, index.view(lambda doc: doc.key in allowed))
        self._views[key] = made
        if len(self._views) > MAX_VIEWS:
            self._views.popitem(last=False)
        return made

    def _documents(self, server: str, tools: Iterable[mt.Tool]) -> list[ToolDoc]:
        docs = []
        for tool in tools:
            known = self._docs.get((server, id(tool)))
            if known is None or known[0] is not tool:
                known = self._docs[(server, id(tool))] = (tool, ToolDoc(server, tool.name, definition(tool)))
            docs.append(known[1])
        return docs

    def _rebuild(self) -> None:
        """Index every tool every downstream session lists now (and forget the rest)."""
        by_key: dict[tuple[str, str, str], ToolDoc] = {}
        seen: set[tuple[str, int]] = set()
        for downstream in self.gateway.pool.every():
            for doc in self._documents(downstream.name, downstream.tools.values()):
                by_key.setdefault(doc.key, doc)
            seen.update((downstream.name, id(tool)) for tool in downstream.tools.values())
        self._docs = {key: value for key, value in self._docs.items() if key in seen}
        docs = sorted(by_key.values(), key=lambda doc: doc.key)
        vectored = self._vectored
        if self.embedder is not None and vectored is not None and vectored.embeds(docs):
            self._index = self._vectored = ToolIndex(docs, self.embedder, vectored)
            return
        self._index = ToolIndex(docs, None, self._index)
        self._embed(docs)

    def _embed(self, docs: list[ToolDoc]) -> None:
        """Compute the vectors of `docs` off the event loop, then search with them if they are
        still the catalog's."""
        embedder = self.embedder
        if embedder is None or not docs:
            return
        lexical, vectored = self._index, self._vectored or self._index
        if self._embedding is not None:
            self._embedding.cancel()  # for a catalog that is no longer current

        async def embed() -> None:
            index = await asyncio.to_thread(ToolIndex, docs, embedder, vectored)
            self._vectored = index
            if self._index is lexical:
                self._index = index

        self._embedding = asyncio.get_running_loop().create_task(embed())


def _full(definition: dict[str, Any]) -> dict[str, Any]:
    fields = ("title", "description", "inputSchema", "outputSchema", "annotations")
    return {key: definition[key] for key in fields if key in definition}
