"""Demo downstream MCP server: a small notes store.

    python -m agent_mcp_gateway.demo.notes_server               # stdio (how the gateway starts it)
    python -m agent_mcp_gateway.demo.notes_server --http 8765   # Streamable HTTP at http://127.0.0.1:8765/mcp

Notes live in memory; set NOTES_FILE to a JSON file to keep them between runs. Reading tools
carry the readOnlyHint annotation, so a policy can allow them and nothing else.
stdout is the protocol channel over stdio: this module logs to stderr only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

log = logging.getLogger("notes_server")

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DELETES = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


@dataclass
class Note:
    id: int
    title: str
    body: str
    tags: list[str] = field(default_factory=list)
    created: str = ""

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "tags": self.tags, "created": self.created}


class NoteStore:
    """Notes by id; saved to `path` after every change when a path is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._notes: dict[int, Note] = {}
        self._next_id = 1
        if path is not None and path.is_file():
            for raw in json.loads(path.read_text(encoding="utf-8")):
                note = Note(**raw)
                self._notes[note.id] = note
            self._next_id = max(self._notes, default=0) + 1

    def add(self, title: str, body: str, tags: list[str]) -> Note:
        with self._lock:
            note = Note(
                id=self._next_id,
                title=title,
                body=body,
                tags=sorted({t.strip().lower() for t in tags if t.strip()}),
                created=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._notes[note.id] = note
            self._next_id += 1
            self._save()
            return note

    def get(self, note_id: int) -> Note:
        try:
            return self._notes[note_id]
        except KeyError:
            raise ToolError(f"no note with id {note_id}") from None

    def delete(self, note_id: int) -> Note:
        with self._lock:
            note = self.get(note_id)
            del self._notes[note_id]
            self._save()
            return note

    def all(self, tag: str | None = None) -> list[Note]:
        notes = sorted(self._notes.values(), key=lambda n: n.id)
        if tag:
            wanted = tag.strip().lower()
            notes = [n for n in notes if wanted in n.tags]
        return notes

    def search(self, query: str) -> list[tuple[int, Note]]:
        """Notes containing every word of the query (title, body or tags), best first."""
        words = [w for w in query.lower().split() if w]
        if not words:
            raise ToolError("query is empty")
        hits = []
        for note in self._notes.values():
            title, text = note.title.lower(), f"{note.title} {note.body} {' '.join(note.tags)}".lower()
            if all(w in text for w in words):
                score = sum(text.count(w) + 2 * title.count(w) for w in words)
                hits.append((score, note))
        return sorted(hits, key=lambda hit: (-hit[0], hit[1].id))

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps([asdict(n) for n in self.all()], indent=2)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, encoding="utf-8") as tmp:
            tmp.write(data)
        Path(tmp.name).replace(self.path)


def _store_from_env() -> NoteStore:
    path = os.environ.get("NOTES_FILE")
    return NoteStore(Path(path).expanduser() if path else None)


def build_server(store: NoteStore | None = None) -> FastMCP:
    store = store if store is not None else _store_from_env()
    mcp = FastMCP(
        "notes",
        instructions="A small notes store: add, list, search, read and delete short text notes.",
    )

    @mcp.tool(annotations=WRITES)
    def add_note(
        title: Annotated[str, Field(min_length=1, max_length=200)],
        body: Annotated[str, Field(max_length=20_000)] = "",
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Save a note; returns its id and summary."""
        return store.add(title.strip(), body, tags or []).summary()

    @mcp.tool(annotations=READ_ONLY)
    def list_notes(tag: str | None = None) -> list[dict[str, Any]]:
        """Summaries of all notes, oldest first; only those with `tag` when given."""
        return [n.summary() for n in store.all(tag)]

    @mcp.tool(annotations=READ_ONLY)
    def get_note(note_id: int) -> dict[str, Any]:
        """One note in full."""
        return asdict(store.get(note_id))

    @mcp.tool(annotations=READ_ONLY)
    def search_notes(query: str, limit: Annotated[int, Field(ge=1, le=100)] = 10) -> list[dict[str, Any]]:
        """Notes whose title, body or tags contain every word of `query`, best match first."""
        return [{**note.summary(), "score": score} for score, note in store.search(query)[:limit]]

    @mcp.tool(annotations=DELETES)
    def delete_note(note_id: int) -> str:
        """Delete a note by id."""
        note = store.delete(note_id)
        return f"deleted note {note.id} ({note.title})"

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agent_mcp_gateway.demo.notes_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve Streamable HTTP on --host:PORT at /mcp"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address for --http (default 127.0.0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    server = build_server()
    if args.http:
        server.run(transport="http", host=args.host, port=args.http, show_banner=False)
    else:
        server.run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
