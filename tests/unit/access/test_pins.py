"""The pins store and definition hashes (access/pins.py), without a gateway or a server. Pinning
through a running gateway, and approval with the CLI, are in tests/process/test_pins.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest

from agent_mcp_gateway.access.pins import PINS_NAME, PinsFileError, PinStore, definition_hash, pins_path
from agent_mcp_gateway.settings import load_settings


def tool(**fields: Any) -> mt.Tool:
    return mt.Tool.model_validate({"name": "t", "inputSchema": {"type": "object"}, **fields})


def test_definition_hash_is_canonical_and_covers_what_clients_see() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    reordered = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}
    base = definition_hash(tool(description="d", inputSchema=schema))
    assert base == definition_hash(tool(description="d", inputSchema=reordered))
    assert base == definition_hash(tool(description="d", inputSchema=schema, _meta={"seen": 1}))
    changes = [
        {"description": "d2", "inputSchema": schema},
        {"description": "d", "inputSchema": {**schema, "required": ["a"]}},
        {"description": "d", "inputSchema": schema, "outputSchema": {"type": "object"}},
        {"description": "d", "inputSchema": schema, "annotations": {"destructiveHint": True}},
        {"description": "d", "inputSchema": schema, "title": "T"},
    ]
    digests = {definition_hash(tool(**change)) for change in changes}
    assert len(digests) == len(changes) and base not in digests


def test_stores_sharing_a_file_merge_their_pins_and_write_atomically(tmp_path: Path) -> None:
    path = tmp_path / PINS_NAME
    first, second = PinStore(path), PinStore(path)
    assert first.review("a", [tool(name="x")], pinned=True) == [tool(name="x")]
    assert second.review("b", [tool(name="y")], pinned=True) == [tool(name="y")]
    assert first.review("a", [tool(name="x", description="changed")], pinned=True) == []
    saved = PinStore(path).load().servers
    assert set(saved) == {"a", "b"} and saved["a"]["x"].candidate == definition_hash(
        tool(name="x", description="changed")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [PINS_NAME, PINS_NAME + ".lock"]  # no temporary left
    # An unpinned server is passed through and records nothing.
    assert first.review("c", [tool(name="z")], pinned=False) == [tool(name="z")]
    assert "c" not in PinStore(path).load().servers
    path.write_text("[]")
    with pytest.raises(PinsFileError):
        PinStore(path).load()


def test_pins_path_follows_the_audit_log(tmp_path: Path) -> None:
    settings = load_settings({"GATEWAY_AUDIT_LOG": str(tmp_path / "logs" / "audit.jsonl")})
    assert pins_path(settings) == tmp_path / "logs" / PINS_NAME
    assert pins_path(load_settings({})).name == PINS_NAME
