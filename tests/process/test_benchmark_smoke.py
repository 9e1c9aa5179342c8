"""Short runs of the benchmarks: the harnesses work, not how fast anything is.

bench_gateway.py: every phase runs with tiny counts against real processes (echo over HTTP and
stdio, the gateway over HTTP and stdio, a two-worker gateway, gateways started in front of
slow-starting stdio servers); the script checks every answer itself and exits 1 on any failed
call. No timing is asserted: the machine is shared and the figures are noise here.
bench_search.py: the rankers' accuracy on the committed corpus and query set, which is
deterministic, so it has a floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_gateway.py"
SEARCH_RECALL5_FLOOR = 0.82  # the lexical ranker on the repo's query set (measured: 0.87)
ERAS = ("2025-11-25", "2026-07-28")
SMOKE = [
    "--quick",
    "--json",
    "--latency-calls", "3",
    "--sessions", "3",
    "--calls-per-session", "1",
    "--paced-rate", "20",
    "--paced-seconds", "0.5",
    "--rounds", "2",
    "--round-calls", "6",
    "--round-sessions", "2",
    "--lookup-sessions", "100",
    "--path-calls", "3",
    "--loop-sessions", "2,3",
    "--loop-calls", "2",
    "--discovery-calls", "3",
    "--idle-sessions", "20",
    "--idle-connections", "2",
    "--rss-calls", "20,40",
    "--rss-sessions", "2",
    "--start-delays", "0.1,0.3",
    "--start-repeats", "1",
    "--no-peer-install",
    "--peer-calls", "3",
    "--peer-loop-sessions", "2",
    "--peer-loop-calls", "2",
]  # fmt: skip


def test_benchmark_runs_every_phase(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "app")}
    peers_dir = ["--peers-dir", str(tmp_path)]  # empty: the peers that need installing are skipped
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *SMOKE, *peers_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["errors"] == []

    paths = results["paths"]["paths"]
    expected = {"direct/stdio", "stdio-gw/execute_tool/stdio", "stdio-gw/execute_tool/http"}
    for era in ERAS:
        expected |= {f"direct/http/{era}", f"execute_tool/http/{era}", f"execute_tool/stdio/{era}"}
        expected |= {f"aggregate/http/{era}", f"aggregate/stdio/{era}"}
    assert set(paths) == expected
    assert all(row["count"] == 3 for row in paths.values())
    assert all("overhead_p50_ms" in row for name, row in paths.items() if not name.startswith("direct"))
    assert set(results["paths"]["cpu_ms_per_call"]) >= {"gateway_worker", "echo_server", "direct/stdio"}

    runs = results["closed_loop"]["runs"]
    assert set(runs) == {f"{era}/{n}" for era in ERAS for n in (2, 3)}
    for key, run in runs.items():
        sessions = int(key.rsplit("/", 1)[1])
        assert {kind: (r["calls"], r["errors"]) for kind, r in run.items()} == {
            kind: (sessions * 2, 0) for kind in ("direct", "execute_tool", "aggregate")
        }

    for name in ("list_servers", "get_server_tools"):
        assert results["discovery"][name]["gateway_time"]["count"] == 3

    workers = results["workers"]
    assert set(workers["runs"]) == {"2", "3"}
    assert workers["session_era_requests"] > 0
    assert any(t["metric"].startswith("overhead execute_tool/http/2026-07-28") for t in results["targets"])

    idle = results["idle_sessions"]
    assert (idle["opened"], idle["errors"], idle["settings"]["sdk_session_cap"]) == (20, 0, 10_000)
    assert idle["scaled_down_from"] == 10_000
    assert idle["active_sessions_held"] - idle["active_sessions_before"] == 20
    assert idle["active_sessions_after"] == idle["active_sessions_before"]
    assert idle["connections_held"] <= 2 + 1  # the shared connections (and the /metrics read)

    calls = results["rss_calls"]
    assert [s["calls"] for s in calls["samples"]][::9] == [20, 40]
    assert (len(calls["samples"]), calls["errors"], calls["scaled_down_from"]) == (10, 0, [10_000, 100_000])

    startup = results["startup"]
    assert sorted(run["kind"] for run in startup["runs"]) == ["delays", "none"]
    assert all(set(run["up_after_s"]) == {"slow0", "slow1"} for run in startup["runs"])
    assert (startup["slowest_delay_s"], startup["sum_delays_s"]) == (0.3, 0.4)
    assert (startup["parallel_spread_s"], startup["serial_spread_s"]) == (0.2, 0.3)
    assert startup["bounded_by"] in ("slowest", "sum")
    peers = results["peers"]
    assert set(peers["paths"]) == {
        "direct/http",
        "direct/stdio",
        "this gateway, discovery (execute_tool)",
        "this gateway, aggregate (echo__echo)",
        "FastMCP create_proxy",
        "this gateway over stdio (execute_tool)",
    }
    assert all(row["calls"] == 3 for row in peers["paths"].values())
    assert peers["paths"]["FastMCP create_proxy"]["closed_loop_per_s"] > 0
    assert set(peers["skipped"]) == {"ContextForge", "original agent-mcp-gateway 0.2.5"}
    assert all("--no-peer-install" in reason for reason in peers["skipped"].values())
    assert peers["cpu_target"]["met"] is None  # not measured without ContextForge

    metrics = " ".join(t["metric"] for t in results["targets"])
    assert "20 idle sessions" in metrics and "20 -> 40 calls" in metrics and "slow stdio servers" in metrics


def test_the_compare_phase_measures_both_checkouts() -> None:
    """`--only compare`: this tree against a baseline checkout (here the same `app`, an A/A run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "app")}
    command = [sys.executable, str(SCRIPT), "--only", "compare", "--baseline", str(ROOT / "app")]
    options = ["--compare-calls", "3", "--compare-rounds", "2"]
    done = subprocess.run([*command, *options], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)["compare"]["cpu_ms_per_request"]
    assert set(rows) == {
        "HTTP gateway: ping",
        "HTTP gateway: list_servers",
        "HTTP gateway: execute_tool, HTTP downstream",
        "HTTP gateway: execute_tool, stdio downstream",
        "stdio gateway: execute_tool, stdio downstream",
        "stdio gateway: execute_tool, HTTP downstream",
    }
    assert all(row["new_cpu_ms"] >= 0 and row["baseline_cpu_ms"] >= 0 for row in rows.values())


def test_search_benchmark_measures_every_ranker() -> None:
    """benchmarks/bench_search.py --smoke: every lexical ranker scored on the whole query set,
    the token costs and the latency at 1,000+ tools; the gateway's search must find an
    acceptable tool among its first five for most queries, and no worse than plain BM25."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "app")}
    script = ROOT / "benchmarks" / "bench_search.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

    corpus = report["corpus"]
    assert corpus["servers"] >= 10 and corpus["tools"] >= 150
    assert corpus["queries"] >= 200 and corpus["hard"] * 5 >= corpus["queries"]
    accuracy = report["accuracy"]
    assert set(accuracy) >= {
        "gateway search, lexical only",
        "BM25 (bm25s, name + description)",
        "FastMCP BM25SearchTransform",
    }
    for row in accuracy.values():
        for subset in ("all", "hard", "held_out"):
            figures = row[subset]
            assert 0 <= figures["recall@1"] <= figures["recall@5"] <= 1
            assert figures["recall@1"] <= figures["mrr"] <= figures["recall@5"] + 1 / 6
    gateway = accuracy["gateway search, lexical only"]["all"]
    assert gateway["queries"] == corpus["queries"]
    assert gateway["recall@5"] >= SEARCH_RECALL5_FLOOR
    for baseline in ("BM25 (bm25s, name + description)", "FastMCP BM25SearchTransform"):
        for subset in ("all", "held_out"):
            for metric in ("recall@1", "recall@5"):
                ours = accuracy["gateway search, lexical only"][subset][metric]
                assert ours > accuracy[baseline][subset][metric], (baseline, subset, metric)

    tokens = report["tokens"]
    search = tokens["gateway_search"]
    assert search["successes"] == round(gateway["recall@5"] * corpus["queries"])
    assert (
        0 < search["mean"] < tokens["discovery_without_search"]["mean"] < tokens["up_front_all_definitions"]
    )

    latency = report["latency"]
    assert latency["tools"] >= 1000
    assert (
        0
        < latency["gateway search, lexical only"]["p50_ms"]
        <= latency["gateway search, lexical only"]["p95_ms"]
    )
    assert report["build"]["gateway search, lexical only"]["build_s"] > 0
