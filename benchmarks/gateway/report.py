"""The report: each figure judged against its target, and the tables printed at the end."""

from __future__ import annotations

from collections.abc import Callable

from .common import (
    TARGET_E2E_P95_MS,
    TARGET_LOOKUP_MS,
    TARGET_MEMORY_GROWTH_PCT,
    TARGET_OVERHEAD_P95_MS,
    Results,
)
from .footprint import TARGET_IDLE_BYTES_PER_10K
from .peers import TARGET_CPU_RATIO
from .peers import table as peers_table


def judge(results: Results) -> None:
    lat, conc, mem, ses = results.latency, results.concurrency, results.memory, results.sessions
    sat, paced, n = conc["saturated"], conc["paced"], conc["sessions"]
    worst_lookup_us = max(c["p99_us"] for c in ses["cases"].values())
    all_runs = [sat["gateway"], sat["direct"], paced["gateway"], paced["direct"]]
    opened = min(r["sessions_opened"] for r in all_runs)
    errors = sum(r["errors"] for r in all_runs)
    rows = [
        (
            "end-to-end P95, sequential",
            f"{lat['gateway']['p95']:.1f} ms",
            "< 100 ms",
            lat["gateway"]["p95"] < TARGET_E2E_P95_MS,
        ),
        (
            "overhead P95, sequential",
            f"{lat['overhead_p95_ms']:.1f} ms",
            "< 30 ms",
            lat["overhead_p95_ms"] < TARGET_OVERHEAD_P95_MS,
        ),
        (
            f"end-to-end P95, {n} sessions, {conc['paced_rate_per_s']:g}/s",
            f"{paced['gateway']['p95']:.1f} ms",
            "< 100 ms",
            paced["gateway"]["p95"] < TARGET_E2E_P95_MS,
        ),
        (
            f"overhead P95, {n} sessions, {conc['paced_rate_per_s']:g}/s",
            f"{paced['overhead_p95_ms']:.1f} ms",
            "< 30 ms",
            paced["overhead_p95_ms"] < TARGET_OVERHEAD_P95_MS,
        ),
        (
            f"end-to-end P95, {n} sessions, saturated",
            f"{sat['gateway']['p95']:.1f} ms",
            "< 100 ms",
            sat["gateway"]["p95"] < TARGET_E2E_P95_MS,
        ),
        (
            f"overhead P95, {n} sessions, saturated",
            f"{sat['overhead_p95_ms']:.1f} ms",
            "< 30 ms",
            sat["overhead_p95_ms"] < TARGET_OVERHEAD_P95_MS,
        ),
        (
            f"{n} sessions held at once",
            f"{opened} open, {errors} errors",
            "100+, 0 errors",
            opened >= 100 and errors == 0,
        ),
        (
            "session lookup p99 (slowest case)",
            f"{worst_lookup_us:.2f} us",
            "< 1 ms",
            worst_lookup_us / 1000 < TARGET_LOOKUP_MS,
        ),
        (
            "worker RSS growth, round 2 -> last",
            f"{mem['growth_round2_to_last_mib']:+.1f} MiB ({mem['growth_round2_to_last_pct']:+.1f} %)",
            f"< {TARGET_MEMORY_GROWTH_PCT:.0f} %",
            (mem["growth_round2_to_last_pct"] or 0) < TARGET_MEMORY_GROWTH_PCT,
        ),
    ]
    rows += performance_targets(results)
    rows += resource_targets(results)
    target = results.peers.get("cpu_target", {})
    if target.get("met") is not None:
        rows.append(
            (
                "CPU per call, ContextForge's best / ours",
                f"x{target['ratio']}",
                f">= x{TARGET_CPU_RATIO:g}",
                target["met"],
            )
        )
    results.targets = [{"metric": m, "value": v, "target": t, "met": bool(ok)} for m, v, t, ok in rows]


def performance_targets(results: Results) -> list[tuple[str, str, str, bool]]:
    """The targets of the performance issue: overheads per path, closed-loop ratios and CPU,
    discovery time, RSS growth."""
    rows: list[tuple[str, str, str, bool]] = []
    for name, row in results.paths["paths"].items():
        if "vs" not in row:
            continue
        if name.startswith("stdio-gw/"):
            limits, label = (1.5, None), "<= 1.5 ms p50"
        else:
            limits, label = (3.0, 4.0), "<= 3 / 4 ms (p50 / p95)"
        met = row["overhead_p50_ms"] <= limits[0] and (
            limits[1] is None or row["overhead_p95_ms"] <= limits[1]
        )
        rows.append(
            (
                f"overhead {name}",
                f"{row['overhead_p50_ms']:.2f} / {row['overhead_p95_ms']:.2f} ms",
                label,
                met,
            )
        )
    for key, run in results.closed_loop["runs"].items():
        for kind in ("execute_tool", "aggregate"):
            r = run[kind]
            rows.append(
                (
                    f"closed loop {key} sessions, {kind}",
                    f"x{r['throughput_ratio']}, {r['errors']} errors",
                    ">= x0.7, 0 errors",
                    (r["throughput_ratio"] or 0) >= 0.7 and r["errors"] == 0,
                )
            )
            gw_cpu, echo_cpu = r["cpu_ms_per_call"]["gateway_worker"], r["cpu_ms_per_call"]["echo_server"]
            rows.append(
                (
                    f"CPU/call {key}, {kind}: gateway vs echo",
                    f"{gw_cpu:.2f} vs {echo_cpu:.2f} ms",
                    "gateway <= echo",
                    gw_cpu <= echo_cpu,
                )
            )
    for name, row in results.discovery.items():
        p50 = row["gateway_time"]["p50"]
        rows.append((f"{name} gateway time p50", f"{p50:.3f} ms", "< 1 ms", p50 < 1.0))
    return rows


def resource_targets(results: Results) -> list[tuple[str, str, str, bool]]:
    """Idle sessions' memory, RSS over many calls, start-up with slow servers."""
    idle, calls, start = results.idle_sessions, results.rss_calls, results.startup
    allowed_mb = TARGET_IDLE_BYTES_PER_10K * idle["sessions"] / 10_000 / 1e6
    return [
        (
            f"{idle['sessions']:,} idle sessions: worker RSS extra",
            f"{idle['extra_mib']:+.1f} MiB ({idle['kib_per_session']:.1f} KiB each)",
            f"< {allowed_mb:g} MB",
            idle["extra_mib"] * 2**20 < allowed_mb * 1e6,
        ),
        (
            f"worker RSS {calls['first_calls']:,} -> {calls['last_calls']:,} calls",
            f"{calls['growth_mib']:+.1f} MiB ({calls['growth_pct']:+.1f} %)",
            f"< {TARGET_MEMORY_GROWTH_PCT:.0f} %",
            calls["growth_pct"] < TARGET_MEMORY_GROWTH_PCT,
        ),
        (
            f"start to /ready, {start['servers']} slow stdio servers",
            f"up within {start['up_spread_median_s']:g} s (parallel {start['parallel_spread_s']:g}, "
            f"serial {start['serial_spread_s']:g}); {start['extra_s']:+.2f} s",
            "bounded by the slowest",
            start["bounded_by"] == "slowest",
        ),
    ]


def render_resources(results: Results, line: Callable[[str], None]) -> None:
    idle, calls, start = results.idle_sessions, results.rss_calls, results.startup
    line("")
    scaled = f" (scaled down from {idle['scaled_down_from']:,})" if idle["scaled_down_from"] else ""
    line(
        f"Idle sessions: {idle['sessions']:,} session-era sessions{scaled} (initialize + initialized) held at "
        f"once over {idle['connections']} keep-alive connections"
    )
    line(
        f"  opened {idle['opened']:,} in {idle['open_seconds']} s ({idle['opened_per_s']}/s); active-sessions "
        f"gauge {idle['active_sessions_before']:g} -> {idle['active_sessions_held']:g} held -> "
        f"{idle['active_sessions_after']:g} after DELETE ({idle['close_seconds']} s)"
    )
    line(
        f"  worker RSS {idle['rss_before_mib']} MiB before, {idle['rss_held_mib']} held "
        f"({idle['extra_mib']:+.1f} MiB, {idle['kib_per_session']} KiB per session), "
        f"{idle['rss_after_close_mib']} after DELETE"
    )
    line("  settings: " + ", ".join(f"{k} {v}" for k, v in idle["settings"].items()))
    line("")
    scaled = (
        " (scaled down from {:,} -> {:,})".format(*calls["scaled_down_from"])
        if calls["scaled_down_from"]
        else ""
    )
    line(
        f"RSS over calls: {calls['sessions']} sessions ({' and '.join(calls['eras'])}), execute_tool back to back"
        + scaled
    )
    line(
        "  "
        + ", ".join(f"{s['calls']:,}: {s['rss_mib']} MiB" for s in calls["samples"])
        + f"; {calls['samples'][-1]['throughput_per_s']} calls/s at the end"
    )
    line(
        f"  growth {calls['first_calls']:,} -> {calls['last_calls']:,} calls: {calls['growth_mib']:+.1f} MiB "
        f"({calls['growth_pct']:+.1f} %)"
    )
    line("")
    line(
        f"Startup: python -m agent_mcp_gateway (HTTP) to /ready 200 with {start['servers']} stdio servers up; "
        f"delays {start['delays_s']} s vs none, median of {start['repeats']}"
    )
    line(
        f"  no delay {start['ready_no_delay_s']} s, with delays {start['ready_with_delays_s']} s "
        f"(serving /ready after {start['serving_s']} s): the delays added {start['extra_s']} s; slowest "
        f"{start['slowest_delay_s']} s, sum {start['sum_delays_s']} s"
    )
    line(
        f"  first to last server up, per run: no delay {start['up_spread_s']['none']} s, with delays "
        f"{start['up_spread_s']['delays']} s (started together: about {start['parallel_spread_s']} s; "
        f"one after another: {start['serial_spread_s']}+ s): bounded by the {start['bounded_by']}"
    )


def render(results: Results) -> str:
    lat, conc, ses, mem = results.latency, results.concurrency, results.sessions, results.memory
    out: list[str] = []
    line = out.append
    cfg = results.config
    line(
        f"agent-mcp-gateway benchmark ({cfg['mode']}: {cfg['cpus']} CPUs, load average {cfg['load_before']} "
        f"before / {cfg['load_after']} after, Python {cfg['python']}, {cfg['seconds']} s)"
    )
    line("")
    line("Latency: one session per path, sequential calls, paths alternated in random order (ms)")
    line(f"  {'path':<10}{'count':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    for name in ("direct", "baseline", "gateway"):
        if name not in lat:
            continue
        s = lat[name]
        line(
            f"  {name:<10}{s['count']:>7}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}"
            f"{s['mean']:>9.2f}"
        )
    line(
        f"  gateway/direct: p50 x{lat['ratio_p50']}, p95 x{lat['ratio_p95']}; "
        f"overhead p50 {lat['overhead_p50_ms']:.2f} ms, p95 {lat['overhead_p95_ms']:.2f} ms"
    )
    line(
        f"  CPU per call: gateway worker {lat['gateway_worker_cpu_ms_per_call']} ms, "
        f"echo server {lat['echo_cpu_ms_per_call']} ms; downstream TCP connections the gateway opened and "
        f"closed: {lat['downstream_connections_closed']} ({lat['downstream_connections_per_call']} per call)"
    )
    for kind, title in (
        (
            "saturated",
            (
                f"{conc['sessions']} sessions held open, then {conc['calls_per_session']} calls each "
                "back to back, all at once (capacity)"
            ),
        ),
        (
            "paced",
            (
                f"{conc['sessions']} sessions held open, calling at random times, about "
                f"{conc['paced_rate_per_s']:g} calls/s in all for {conc['paced_seconds']:g} s"
            ),
        ),
    ):
        pair = conc[kind]
        line("")
        line(f"Concurrency, {kind}: {title} (ms)")
        line(
            f"  {'path':<10}{'open':>6}{'conns':>7}{'calls':>7}{'errors':>8}{'calls/s':>9}"
            f"{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
        )
        for name in ("direct", "gateway"):
            s = pair[name]
            line(
                f"  {name:<10}{s['sessions_opened']:>6}{s['connections_held']:>7}{s['calls']:>7}{s['errors']:>8}"
                f"{s['throughput_per_s']:>9.1f}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}"
            )
        line(
            f"  gateway/direct: p95 x{pair['ratio_p95']}, throughput x{pair['throughput_ratio']}; overhead "
            f"p50 {pair['overhead_p50_ms']:.1f} ms, p95 {pair['overhead_p95_ms']:.1f} ms; gateway "
            f"active-sessions gauge while held: {pair['gateway']['active_sessions_metric']}"
        )
        g, d = pair["gateway"]["cpu_seconds"], pair["direct"]["cpu_seconds"]
        line(
            f"  CPU s, load generator / gateway worker / echo server: gateway run {g['load_generator']} / "
            f"{g['gateway_worker']} / {g['echo_server']}, direct run {d['load_generator']} / "
            f"{d['gateway_worker']} / {d['echo_server']}"
        )
    line(
        "  (conns: server-side ESTABLISHED TCP connections while the sessions were held; the direct "
        "count includes the gateway's own)"
    )
    line("")
    line(f"Session lookup, in process, {ses['sessions']} sessions, {ses['lookups']} random lookups (us)")
    for name, c in ses["cases"].items():
        line(
            f"  {name:<38} median {c['median_us']:>7.3f}   p99 {c['p99_us']:>7.3f}   max {c['max_us']:>8.1f}"
        )
    line("")
    line(
        f"Memory: gateway worker RSS over {mem['rounds']} rounds of {mem['calls_per_round']} calls "
        f"({mem['sessions_per_round']} new sessions per round, deleted after it)"
    )
    line(f"  before:  RSS {mem['rss_before_mib']:>7.1f} MiB")
    for r in mem["per_round"]:
        line(
            f"  round {r['round']}: RSS {r['rss_mib']:>7.1f} MiB   {r['throughput_per_s']:>6.1f} calls/s   "
            f"p50 {r['p50']:>7.2f} ms   p95 {r['p95']:>7.2f} ms   active sessions after {r['active_sessions']}"
        )
    line(
        f"  growth round 2 -> {mem['rounds']}: {mem['growth_round2_to_last_mib']:+.1f} MiB "
        f"({mem['growth_round2_to_last_pct']:+.1f} %); audit log written: {mem['audit_log_bytes'] / 2**20:.1f} MiB"
    )
    render_performance(results, line)
    render_resources(results, line)
    if results.peers:
        line("")
        for text in peers_table(results.peers):
            line(text)
    line("")
    line("Targets")
    for t in results.targets:
        line(f"  {'PASS' if t['met'] else 'MISS'}  {t['metric']:<42} {t['value']:<26} target {t['target']}")
    if results.errors:
        line("")
        line("ERRORS (the run is not valid):")
        for error in results.errors:
            line(f"  {error}")
    return "\n".join(out)


def render_performance(results: Results, line: Callable[[str], None]) -> None:
    paths, loop, disc, workers = results.paths, results.closed_loop, results.discovery, results.workers
    line("")
    line(
        f"Paths: one client per path, {paths['calls']} sequential calls each, all paths alternated in random "
        "order (ms; overhead = path minus the direct path it is measured against)"
    )
    line(f"  {'path':<34}{'p50':>8}{'p95':>8}{'p99':>8}  {'overhead p50 / p95':<20}vs")
    for name, row in paths["paths"].items():
        over = f"{row['overhead_p50_ms']:.2f} / {row['overhead_p95_ms']:.2f}" if "vs" in row else ""
        line(
            f"  {name:<34}{row['p50']:>8.2f}{row['p95']:>8.2f}{row['p99']:>8.2f}  {over:<20}{row.get('vs', '')}"
        )
    cpu = ", ".join(f"{k} {v}" for k, v in paths["cpu_ms_per_call"].items())
    line(f"  CPU ms per call: {cpu}")
    line("  RSS MiB: " + ", ".join(f"{k} {v}" for k, v in paths["rss_mib"].items()))
    line("")
    line(
        f"Closed loop: N sessions, {loop['calls_per_session']} calls each back to back (HTTP echo downstream; "
        "CPU ms per call of load generator / gateway worker / echo server)"
    )
    line(
        f"  {'era/sessions':<18}{'path':<14}{'calls/s':>9}{'ratio':>7}{'errors':>8}{'p50':>9}{'p95':>9}  CPU ms/call"
    )
    for key, run in loop["runs"].items():
        for kind, r in run.items():
            c = r["cpu_ms_per_call"]
            ratio = f"x{r['throughput_ratio']}" if "throughput_ratio" in r else ""
            line(
                f"  {key:<18}{kind:<14}{r['throughput_per_s']:>9.1f}{ratio:>7}{r['errors']:>8}{r['p50']:>9.2f}"
                f"{r['p95']:>9.2f}  {c['load_generator']} / {c['gateway_worker']} / {c['echo_server']}"
            )
    line("  RSS MiB after: " + ", ".join(f"{k} {v}" for k, v in loop["rss_mib"].items()))
    line("")
    line("Discovery (ms): the gateway's own time (audit latency_ms) and end to end")
    for name, row in disc.items():
        g, e = row["gateway_time"], row["end_to_end"]
        line(
            f"  {name:<18} gateway p50 {g['p50']:.3f} p95 {g['p95']:.3f}; end to end p50 {e['p50']:.2f} p95 {e['p95']:.2f}"
        )
    line("")
    line(
        f"Workers: 2026-07-28 closed loop, {workers['calls_per_session']} calls per session, 1 vs 2 Granian workers"
    )
    for count, row in workers["runs"].items():
        one, two = row["1"], row["2"]
        line(
            f"  {count:>3} sessions: 1 worker {one['throughput_per_s']:.1f}/s (p95 {one['p95']:.1f} ms, "
            f"{one['gateway_cpu_ms_per_call']} ms CPU/call), 2 workers {two['throughput_per_s']:.1f}/s "
            f"(p95 {two['p95']:.1f} ms, {two['gateway_cpu_ms_per_call']} ms CPU/call): x{row['speedup']}"
        )
    line(
        f"  session-era clients on 2 workers, a new connection per request: {workers['session_era_failed']} of "
        f"{workers['session_era_requests']} requests failed (their session lives in the other worker)"
    )
