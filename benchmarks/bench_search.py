"""Tool search: which tool an agent finds for a need, and what finding it costs.

One run, one corpus (benchmarks/search/corpus.json: the tools/list of 25 third-party MCP
servers from npm and PyPI, as captured by benchmarks/search/capture.py) and one query set
(benchmarks/search/queries.json: needs written by hand as agents state them, each with every
tool that meets it; a fifth or more tagged hard). Rankers:

- gateway: `agent_mcp_gateway.server.search.ToolIndex`, with the bundled sentence embedding
  model when the optional `search` extra is installed (else that row is left out), and lexical
  only;
- BM25: plain Okapi BM25 (`bm25s`) over name + description, lower-cased words, no
  identifier splitting, no stemming, no stop words;
- FastMCP's search transforms (`BM25SearchTransform`, `RegexSearchTransform`), used as they
  are meant to be: every tool on a FastMCP server carrying the transform, named
  `{server}_{tool}`, searched through its `search_tools` tool by an in-memory client. The regex transform gets the query's words as an alternation (`word|word|...`); it
  returns matches in catalog order, unranked;
- embeddings alone: cosine similarity of the same model's embeddings of name + description.

Figures: recall@1 and recall@5 (an acceptable tool first / among the first five) and MRR
(first acceptable tool's reciprocal rank in the first ten), for all queries, the hard ones and
the held-out half: the gateway's weights and synonym table were tuned on the even-numbered
queries only, so the odd-numbered ones show how it does on needs it was not tuned for.
Tokens (compact JSON characters / 4, as benchmarks/context_tokens.py counts) an agent spends to
reach the right tool: through the gateway's search, the brief answer for five hits plus the one
full definition it then needs (get_server_tools with names=); through the discovery view without
search, list_servers plus get_server_tools of the tool's server; FastMCP's transform answers with
five full definitions; against loading every definition up front (the aggregate view). Latency:
each ranker's search time, p50/p95 over the queries, on the corpus replicated under distinct
server names to 1,000+ tools; and the gateway index's build time and Python memory
(tracemalloc) at that size.

    python benchmarks/bench_search.py [--smoke] [--json]

`--smoke` leaves out the model and the regex transform, and times a few queries: for CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "app"))  # run from a checkout without installing the package

from fastmcp import Client, FastMCP  # noqa: E402
from fastmcp.server.transforms.search import BM25SearchTransform, RegexSearchTransform  # noqa: E402
from fastmcp.tools.base import Tool  # noqa: E402

from agent_mcp_gateway.server.discovery import estimate_tokens  # noqa: E402
from agent_mcp_gateway.server.search import Embedder, ToolDoc, ToolIndex, default_embedder, summary  # noqa: E402

HERE = Path(__file__).resolve().parent / "search"
CORPUS = HERE / "corpus.json"
QUERIES = HERE / "queries.json"
DEPTH = 10  # ranks read for MRR
LIMIT = 5  # hits an agent asks for
SCALE_TOOLS = 1000
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
TARGETS = {"recall@5": 0.95, "recall@1": 0.80, "p50_ms": 5.0}

Key = tuple[str, str]  # (server, tool)
Ranker = Callable[[str], list[Key]]


@dataclass(frozen=True)
class Query:
    text: str
    hard: bool
    answers: frozenset[Key]


def load_corpus(path: Path = CORPUS) -> tuple[list[dict[str, Any]], list[ToolDoc]]:
    servers = json.loads(path.read_text())["servers"]
    docs = [ToolDoc(server["name"], tool["name"], tool) for server in servers for tool in server["tools"]]
    return servers, docs


def load_queries(path: Path = QUERIES) -> list[Query]:
    return [
        Query(entry["query"], entry["hard"], frozenset((a["server"], a["tool"]) for a in entry["answers"]))
        for entry in json.loads(path.read_text())["queries"]
    ]


def replicate(docs: Sequence[ToolDoc], at_least: int) -> list[ToolDoc]:
    """The corpus copied under distinct server names (`git`, `git-2`, ...) to `at_least` tools."""
    copies = math.ceil(at_least / len(docs))
    return [
        ToolDoc(doc.server if copy == 0 else f"{doc.server}-{copy + 1}", doc.name, doc.definition)
        for copy in range(copies)
        for doc in docs
    ]


def definition(doc: ToolDoc) -> dict[str, Any]:
    """A tool's definition as a client loads it (the fields context_tokens.py counts)."""
    return {
        key: doc.definition[key] for key in DEFINITION_FIELDS if doc.definition.get(key) not in (None, {}, "")
    }


# --- rankers -----------------------------------------------------------------------------------


def gateway_ranker(docs: Sequence[ToolDoc], embedder: Embedder | None) -> Ranker:
    index = ToolIndex(docs, embedder)
    return lambda query: [(hit.doc.server, hit.doc.name) for hit in index.search(query, DEPTH)]


_WORD = re.compile(r"\w+")


def plain_words(text: str) -> list[str]:
    """Lower-cased words; `read_text_file` stays one word (no identifier splitting)."""
    return _WORD.findall(text.lower())


def bm25_ranker(docs: Sequence[ToolDoc]) -> Ranker:
    retriever = bm25s.BM25()
    retriever.index(
        [[*plain_words(f"{doc.name} {doc.definition.get('description') or ''}"), ""] for doc in docs],
        show_progress=False,
    )
    keys = [(doc.server, doc.name) for doc in docs]

    def rank(query: str) -> list[Key]:
        ids = retriever.get_tokens_ids(plain_words(query))
        if not ids:
            return []
        scores = np.asarray(retriever.get_scores_from_ids(ids))
        order = np.argsort(-scores, kind="stable")[:DEPTH]
        return [keys[i] for i in order if scores[i] > 0]

    return rank


def embedding_ranker(docs: Sequence[ToolDoc], embedder: Embedder) -> Ranker:
    texts = [f"{doc.name}: {doc.definition.get('description') or ''}" for doc in docs]
    unique = list(dict.fromkeys(texts))  # a replicated corpus is encoded once
    by_text = dict(zip(unique, embedder.encode(unique), strict=True))
    vectors = np.stack([by_text[text] for text in texts])
    keys = [(doc.server, doc.name) for doc in docs]

    def rank(query: str) -> list[Key]:
        scores = vectors @ embedder.encode([query])[0]
        return [keys[i] for i in np.argsort(-scores, kind="stable")[:DEPTH]]

    return rank


class _Listed(Tool):
    """A tool as a server listed it: searchable, never called here."""

    async def run(self, arguments: dict[str, Any]) -> Any:
        raise NotImplementedError("the benchmark only searches")


def fastmcp_server(docs: Sequence[ToolDoc], transform: Any) -> tuple[FastMCP, dict[str, Key]]:
    """Every corpus tool on one FastMCP server carrying the search transform, named
    `{server}_{tool}` as mounting each server under its name would name it (mounting ranks the
    same but walks 25 providers a call, ~3x slower); and those names back to (server, tool)."""
    server = FastMCP("search-bench")
    names: dict[str, Key] = {}
    for doc in docs:
        name = f"{doc.server}_{doc.name}"
        server.add_tool(
            _Listed(
                name=name,
                description=doc.definition.get("description"),
                parameters=doc.definition.get("inputSchema") or {"type": "object"},
                output_schema=doc.definition.get("outputSchema"),
            )
        )
        names[name] = (doc.server, doc.name)
    server.add_transform(transform)
    return server, names


class FastMCPRanker:
    """FastMCP's transform searched through its own search_tools tool, in memory."""

    def __init__(self, docs: Sequence[ToolDoc], transform: Any, regex: bool = False) -> None:
        self.server, self.names = fastmcp_server(docs, transform)
        self.regex = regex
        self.answers: dict[str, Any] = {}  # query -> the search_tools answer, for its tokens

    async def rank(self, client: Client, query: str) -> list[Key]:
        if self.regex:
            arguments = {"pattern": "|".join(re.escape(word) for word in plain_words(query) if len(word) > 2)}
        else:
            arguments = {"query": query}
        result = await client.call_tool("search_tools", arguments)
        listed = result.structured_content
        tools = listed.get("result", listed) if isinstance(listed, dict) else listed
        self.answers[query] = tools
        return [self.names[tool["name"]] for tool in tools or []]


async def fastmcp_rankings(
    ranker: FastMCPRanker, queries: Sequence[Query]
) -> tuple[dict[str, list[Key]], list[float]]:
    rankings, times = {}, []
    async with Client(ranker.server) as client:
        for query in queries:
            started = time.perf_counter()
            rankings[query.text] = await ranker.rank(client, query.text)
            times.append(time.perf_counter() - started)
    return rankings, times


# --- figures -----------------------------------------------------------------------------------


def first_hit(ranking: Sequence[Key], answers: frozenset[Key]) -> int | None:
    """1-based rank of the first acceptable tool, if any within DEPTH."""
    return next((rank for rank, key in enumerate(ranking[:DEPTH], 1) if key in answers), None)


def accuracy(rankings: dict[str, list[Key]], queries: Sequence[Query]) -> dict[str, Any]:
    ranks = [first_hit(rankings[q.text], q.answers) for q in queries]
    count = len(ranks) or 1
    return {
        "queries": len(ranks),
        "recall@1": round(sum(r == 1 for r in ranks) / count, 3),
        "recall@5": round(sum(r is not None and r <= LIMIT for r in ranks) / count, 3),
        "mrr": round(sum(1 / r for r in ranks if r is not None) / count, 3),
    }


def misses(rankings: dict[str, list[Key]], queries: Sequence[Query]) -> list[dict[str, Any]]:
    out = []
    for query in queries:
        rank = first_hit(rankings[query.text], query.answers)
        if rank is None or rank > 1:
            got = rankings[query.text][:3]
            out.append({"query": query.text, "rank": rank, "top": [f"{s}/{t}" for s, t in got]})
    return out


def brief_answer(ranking: Sequence[Key], by_key: dict[Key, ToolDoc]) -> dict[str, Any]:
    """search_tools' brief answer (detail=brief) for these hits: server, tool and summary."""
    tools = [
        {"server": s, "tool": t, "summary": summary(by_key[(s, t)].definition)} for s, t in ranking[:LIMIT]
    ]
    return {"tools": tools, "returned": len(tools)}


def server_tools_answer(server: str, docs: Sequence[ToolDoc]) -> dict[str, Any]:
    """get_server_tools' answer listing these tools of one server."""
    tools = [definition(doc) for doc in docs]
    used = sum(estimate_tokens(tool) for tool in tools)
    return {
        "server": server,
        "tools": tools,
        "total_available": len(tools),
        "returned": len(tools),
        "tokens_used": used,
    }


def token_costs(
    servers: Sequence[dict[str, Any]],
    docs: Sequence[ToolDoc],
    queries: Sequence[Query],
    gateway: dict[str, list[Key]],
    fastmcp_answers: dict[str, Any] | None,
    fastmcp: dict[str, list[Key]] | None,
) -> dict[str, Any]:
    by_key = {(doc.server, doc.name): doc for doc in docs}
    by_server: dict[str, list[ToolDoc]] = {}
    for doc in docs:
        by_server.setdefault(doc.server, []).append(doc)
    up_front = estimate_tokens([definition(doc) for doc in docs])
    list_servers = estimate_tokens(
        {"servers": [{"name": server["name"], "description": server["package"]} for server in servers]}
    )
    search_costs, discovery_costs, fastmcp_costs = [], [], []
    for query in queries:
        ranking = gateway[query.text]
        rank = first_hit(ranking, query.answers)
        if rank is not None and rank <= LIMIT:
            server, tool = ranking[rank - 1]
            one = server_tools_answer(server, [by_key[(server, tool)]])
            search_costs.append(estimate_tokens(brief_answer(ranking, by_key)) + estimate_tokens(one))
        cheapest = min(
            estimate_tokens(server_tools_answer(s, by_server[s]))
            for s in {server for server, _ in query.answers}
        )
        discovery_costs.append(list_servers + cheapest)
        if fastmcp is not None and fastmcp_answers is not None:
            hit = first_hit(fastmcp[query.text], query.answers)
            if hit is not None and hit <= LIMIT:
                fastmcp_costs.append(estimate_tokens(fastmcp_answers[query.text]))

    def mean(values: list[int]) -> int | None:
        return round(statistics.fmean(values)) if values else None

    return {
        "up_front_all_definitions": up_front,
        "tools": len(docs),
        "gateway_search": {"mean": mean(search_costs), "successes": len(search_costs)},
        "discovery_without_search": {"mean": mean(discovery_costs), "successes": len(discovery_costs)},
        "fastmcp_bm25": {"mean": mean(fastmcp_costs), "successes": len(fastmcp_costs)} if fastmcp else None,
        "queries": len(queries),
    }


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
    }


def timed(rank: Ranker, queries: Sequence[Query]) -> tuple[dict[str, list[Key]], list[float]]:
    rankings, times = {}, []
    for query in queries:
        started = time.perf_counter()
        rankings[query.text] = rank(query.text)
        times.append(time.perf_counter() - started)
    return rankings, times


def build_cost(build: Callable[[], Ranker]) -> tuple[Ranker, dict[str, float]]:
    """A ranker, its build time and the Python memory the build allocated at its peak and still
    holds (tracemalloc: NumPy's arrays are counted, a model's native tensors are not)."""
    tracemalloc.start()
    started = time.perf_counter()
    built = build()
    elapsed = time.perf_counter() - started
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cost = {
        "build_s": round(elapsed, 3),
        "peak_mib": round(peak / 2**20, 2),
        "held_mib": round(current / 2**20, 2),
    }
    return built, cost


# --- the run -----------------------------------------------------------------------------------


def note(message: str, started: float = time.perf_counter()) -> None:
    """Progress on stderr: a full run takes minutes on a busy machine."""
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def run(smoke: bool) -> dict[str, Any]:
    servers, docs = load_corpus()
    queries = load_queries()
    embedder = None if smoke else default_embedder()
    rankers: dict[str, Ranker] = {}
    if embedder is not None:
        rankers["gateway search (BM25 + MiniLM)"] = gateway_ranker(docs, embedder)
    rankers["gateway search, lexical only"] = gateway_ranker(docs, None)
    rankers["BM25 (bm25s, name + description)"] = bm25_ranker(docs)
    if embedder is not None:
        rankers["embeddings alone (MiniLM)"] = embedding_ranker(docs, embedder)
    note(f"built {len(rankers)} rankers over {len(docs)} tools")
    rankings = {name: timed(rank, queries)[0] for name, rank in rankers.items()}
    note("ranked every query")
    fastmcp_bm25 = FastMCPRanker(docs, BM25SearchTransform(max_results=DEPTH))
    rankings["FastMCP BM25SearchTransform"] = asyncio.run(fastmcp_rankings(fastmcp_bm25, queries))[0]
    if not smoke:  # each call lists and hashes the catalog: ~0.1 s a query on a busy machine
        fastmcp_regex = FastMCPRanker(docs, RegexSearchTransform(max_results=DEPTH), regex=True)
        rankings["FastMCP RegexSearchTransform"] = asyncio.run(fastmcp_rankings(fastmcp_regex, queries))[0]
    note("FastMCP transforms ranked every query")
    hard = [q for q in queries if q.hard]
    held_out = queries[1::2]
    table = {
        name: {
            "all": accuracy(ranked, queries),
            "hard": accuracy(ranked, hard),
            "held_out": accuracy(ranked, held_out),
        }
        for name, ranked in rankings.items()
    }
    gateway_name = next(iter(rankings))
    for answers in fastmcp_bm25.answers.values():  # five full definitions, as an agent reads them
        answers[:] = answers[:LIMIT]
    tokens = token_costs(
        servers,
        docs,
        queries,
        rankings[gateway_name],
        fastmcp_bm25.answers,
        rankings["FastMCP BM25SearchTransform"],
    )

    scaled = replicate(docs, SCALE_TOOLS)
    timed_queries = queries[:20] if smoke else queries
    latency: dict[str, Any] = {"tools": len(scaled), "queries": len(timed_queries)}
    builds: dict[str, Any] = {}
    scale_rankers: dict[str, Callable[[], Ranker]] = {}
    if embedder is not None:
        scale_rankers["gateway search (BM25 + MiniLM)"] = lambda: gateway_ranker(scaled, embedder)
    scale_rankers["gateway search, lexical only"] = lambda: gateway_ranker(scaled, None)
    scale_rankers["BM25 (bm25s, name + description)"] = lambda: bm25_ranker(scaled)
    if embedder is not None:
        scale_rankers["embeddings alone (MiniLM)"] = lambda: embedding_ranker(scaled, embedder)
    for name, make in scale_rankers.items():
        rank, builds[name] = build_cost(make)
        note(f"built {name} over {len(scaled)} tools")
        rank(queries[0].text)  # warm: the first search of a process loads lazy state
        latency[name] = percentiles(timed(rank, timed_queries)[1])
        if name == "gateway search (BM25 + MiniLM)":  # asked again: the query's vector is cached
            latency[f"{name}, repeated query"] = percentiles(timed(rank, timed_queries)[1])
    scaled_fastmcp = FastMCPRanker(scaled, BM25SearchTransform(max_results=LIMIT))
    fastmcp_queries = timed_queries[:3] if smoke else timed_queries[:30]  # ~0.5 s a call at this size
    _, times = asyncio.run(fastmcp_rankings(scaled_fastmcp, [fastmcp_queries[0], *fastmcp_queries]))
    latency[f"FastMCP BM25SearchTransform (MCP call in memory, {len(fastmcp_queries)} queries)"] = (
        percentiles(times[1:])
    )

    gateway_all = table[gateway_name]["all"]
    baselines = [name for name in table if not name.startswith("gateway")]
    targets = [
        target(f"{gateway_name}: recall@5", gateway_all["recall@5"], ">=", TARGETS["recall@5"]),
        target(f"{gateway_name}: recall@1", gateway_all["recall@1"], ">=", TARGETS["recall@1"]),
        target(
            f"{gateway_name}: p50 search at {len(scaled)} tools (ms)",
            latency[gateway_name]["p50_ms"],
            "<=",
            TARGETS["p50_ms"],
        ),
    ]
    for name in baselines:
        for subset, metric in [
            ("all", "recall@1"),
            ("all", "recall@5"),
            ("all", "mrr"),
            ("held_out", "recall@1"),
            ("held_out", "recall@5"),
        ]:
            targets.append(
                target(
                    f"{gateway_name} {metric}{' (held-out half)' if subset == 'held_out' else ''} ahead of {name}",
                    table[gateway_name][subset][metric],
                    ">",
                    table[name][subset][metric],
                )
            )
    return {
        "smoke": smoke,
        "corpus": {
            "servers": len(servers),
            "tools": len(docs),
            "queries": len(queries),
            "hard": len(hard),
            "model": embedder is not None,
        },
        "accuracy": table,
        "tokens": tokens,
        "latency": latency,
        "build": builds,
        "targets": targets,
        "gateway_misses": misses(rankings[gateway_name], queries),
    }


def target(metric: str, value: float, op: str, bound: float) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound if op == "<=" else value > bound
    return {"metric": metric, "value": value, "target": f"{op} {bound}", "met": met}


def render(report: dict[str, Any]) -> str:
    corpus = report["corpus"]
    lines = [
        f"Tool search: {corpus['servers']} servers, {corpus['tools']} tools, {corpus['queries']} queries "
        f"({corpus['hard']} hard){'' if corpus['model'] else '; no embedding model installed'}"
        f"{' [smoke]' if report['smoke'] else ''}",
        "",
        f"  {'ranker':<36}{'R@1':>7}{'R@5':>7}{'MRR':>7}   {'hard R@1':>8}{'R@5':>7}{'MRR':>7}"
        f"   {'held-out R@1':>12}{'R@5':>7}{'MRR':>7}",
    ]
    for name, row in report["accuracy"].items():
        a, h, o = row["all"], row["hard"], row["held_out"]
        lines.append(
            f"  {name:<36}{a['recall@1']:>7.3f}{a['recall@5']:>7.3f}{a['mrr']:>7.3f}   "
            f"{h['recall@1']:>8.3f}{h['recall@5']:>7.3f}{h['mrr']:>7.3f}   "
            f"{o['recall@1']:>12.3f}{o['recall@5']:>7.3f}{o['mrr']:>7.3f}"
        )
    tokens = report["tokens"]
    lines += [
        "",
        f"  Tokens to reach the right tool (mean per successful discovery, {tokens['queries']} queries):",
        f"    every definition up front ({tokens['tools']} tools): {tokens['up_front_all_definitions']:,}",
        f"    discovery view, list_servers + get_server_tools(server): {tokens['discovery_without_search']['mean']:,}",
        f"    gateway search_tools (brief, 5 hits) + the one definition: {tokens['gateway_search']['mean']:,} "
        f"({tokens['gateway_search']['successes']} successes)",
    ]
    if tokens["fastmcp_bm25"]:
        fastmcp = tokens["fastmcp_bm25"]
        lines.append(
            f"    FastMCP BM25SearchTransform (5 full definitions): {fastmcp['mean']:,} ({fastmcp['successes']} successes)"
        )
    latency = report["latency"]
    lines += ["", f"  Search latency at {latency['tools']} tools ({latency['queries']} queries):"]
    for name, figures in latency.items():
        if isinstance(figures, dict):
            lines.append(
                f"    {name:<52} p50 {figures['p50_ms']:>8.3f} ms   p95 {figures['p95_ms']:>8.3f} ms"
            )
    for name, cost in report["build"].items():
        lines.append(
            f"    build {name}: {cost['build_s']:.2f} s, tracemalloc peak {cost['peak_mib']} MiB, held {cost['held_mib']} MiB"
        )
    lines += ["", "  Targets:"]
    for row in report["targets"]:
        lines.append(
            f"    {'met ' if row['met'] else 'MISS'} {row['metric']}: {row['value']} (target {row['target']})"
        )
    lines += [
        "",
        f"  Gateway search, queries whose first hit is not acceptable ({len(report['gateway_misses'])}):",
    ]
    for miss in report["gateway_misses"]:
        lines.append(f"    rank {miss['rank']}: {miss['query']!r} -> {', '.join(miss['top'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="lexical rankers only, few timed queries")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    options = parser.parse_args(argv)
    report = run(options.smoke)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
