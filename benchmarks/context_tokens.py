"""Context cost up front: the gateway's tool definitions vs every downstream server's.

An agent connected to MCP servers loads every tool definition they list before it does
anything. Through the gateway it loads the gateway's few tools instead and discovers
downstream tools on demand. This script measures both for a configuration directory
(by default the bundled demo, app/agent_mcp_gateway/demo/config):

  1. the gateway, started over stdio as a local client launches it (`python -m agent_mcp_gateway` in the
     configuration directory) and asked for tools/list by a real fastmcp Client;
  2. each downstream server of the same .mcp.json, connected directly the way the gateway
     connects to it, asked for tools/list.

Tokens are estimated as in agent_mcp_gateway.server.discovery.estimate_tokens (compact JSON characters / 4) over the
tool definitions as a client sees them: name, description, inputSchema and outputSchema
(annotations and title too when a server sets them). The full tools/list JSON, with `_meta`,
is shown beside it, and the same agent's tools/list in the aggregate view (its allowed
downstream tools as the gateway's own). Also shown: what on-demand discovery through the gateway costs when an
agent needs one server (list_servers, then get_server_tools for that server).

    python benchmarks/context_tokens.py [--config DIR] [--agent AGENT] [--json]

For the demo configuration the time server (`pip install mcp-server-time`) must be
installed; GATEWAY_PYTHON is set to this Python so both demo servers start with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from fastmcp import Client  # noqa: E402
from fastmcp.client.transports import ClientTransport, StdioTransport, StreamableHttpTransport  # noqa: E402

from agent_mcp_gateway.config import MCP_CONFIG_NAME, RULES_NAME, ServerConfig, load_mcp_config  # noqa: E402
from agent_mcp_gateway.server.discovery import estimate_tokens  # noqa: E402

DEMO_CONFIG = ROOT / "app" / "agent_mcp_gateway" / "demo" / "config"
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
TIMEOUT = 60


def definitions(tools: list[Any]) -> list[dict[str, Any]]:
    """The tool definitions as the client sees them (fields a server leaves unset omitted)."""
    out = []
    for tool in tools:
        dumped = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
        out.append({key: dumped[key] for key in DEFINITION_FIELDS if dumped.get(key) not in (None, {}, "")})
    return out


def measure(tools: list[Any]) -> dict[str, Any]:
    full = [tool.model_dump(by_alias=True, exclude_none=True, mode="json") for tool in tools]
    return {
        "tools": len(tools),
        "names": [tool.name for tool in tools],
        "tokens": estimate_tokens(definitions(tools)),
        "tokens_full_json": estimate_tokens(full),
        "chars": len(json.dumps(definitions(tools), separators=(",", ":"))),
    }


def downstream_transport(config: ServerConfig, config_dir: Path) -> ClientTransport:
    """Connect the way the gateway does (app.downstream), started from the configuration directory."""
    if config.command:
        return StdioTransport(
            config.command,
            list(config.args),
            env=dict(config.env) or None,
            cwd=config.cwd or str(config_dir),
            keep_alive=False,
        )
    assert config.url is not None
    return StreamableHttpTransport(config.url, headers=dict(config.headers))


async def gateway_side(config_dir: Path, env: dict[str, str], agent: str | None) -> dict[str, Any]:
    transport = StdioTransport(
        sys.executable, ["-m", "agent_mcp_gateway"], env=env, cwd=str(config_dir), keep_alive=False
    )
    async with Client(transport, init_timeout=TIMEOUT, timeout=TIMEOUT) as client:
        tools = await client.list_tools()
        result: dict[str, Any] = {"tools_list": measure(tools), "on_demand": None}
        if agent:
            result["on_demand"] = await on_demand(client, agent)
        return result


async def on_demand(client: Client, agent: str) -> dict[str, Any]:
    """What discovery costs through the gateway: list_servers, then get_server_tools per server."""
    listed = await client.call_tool_mcp("list_servers", {"agent_id": agent})
    if listed.is_error or listed.structured_content is None:
        return {"agent": agent, "error": _text(listed)}
    servers = [entry["name"] for entry in listed.structured_content.get("servers", [])]
    per_server = {}
    for server in servers:
        answer = await client.call_tool_mcp("get_server_tools", {"agent_id": agent, "server": server})
        if answer.is_error or answer.structured_content is None:
            per_server[server] = {"error": _text(answer)}
            continue
        per_server[server] = {
            "tools": answer.structured_content.get("returned"),
            "tokens": estimate_tokens(answer.structured_content),
        }
    return {
        "agent": agent,
        "list_servers_tokens": estimate_tokens(listed.structured_content),
        "servers": servers,
        "get_server_tools": per_server,
    }


async def aggregate_side(
    config_dir: Path, env: dict[str, str], rules_path: Path, agent: str
) -> dict[str, Any]:
    """The same gateway with `agent` in the aggregate view: its allowed downstream tools listed
    as the gateway's own (a copy of the rules with `view: aggregate`, the agent pinned)."""
    rules = json.loads(rules_path.read_text())
    rules["agents"][agent]["view"] = "aggregate"
    aggregate_rules = Path(env["GATEWAY_AUDIT_LOG"]).with_name("aggregate-rules.json")
    aggregate_rules.write_text(json.dumps(rules))
    transport = StdioTransport(
        sys.executable,
        ["-m", "agent_mcp_gateway"],
        env={**env, "GATEWAY_RULES": str(aggregate_rules), "GATEWAY_AGENT": agent},
        cwd=str(config_dir),
        keep_alive=False,
    )
    async with Client(transport, init_timeout=TIMEOUT, timeout=TIMEOUT) as client:
        return {"agent": agent, **measure(await client.list_tools())}


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)[:200]


async def direct_side(config_dir: Path, servers: dict[str, ServerConfig]) -> dict[str, Any]:
    async def one(name: str, config: ServerConfig) -> tuple[str, dict[str, Any]]:
        try:
            async with Client(
                downstream_transport(config, config_dir), init_timeout=TIMEOUT, timeout=TIMEOUT
            ) as client:
                return name, measure(await client.list_tools())
        except Exception as exc:  # reported per server; the total is then incomplete
            return name, {"error": f"{type(exc).__name__}: {exc}"[:300]}

    return dict(await asyncio.gather(*(one(name, config) for name, config in servers.items())))


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _row(label: str, figures: dict[str, Any]) -> str:
    return f"  {label:<28}{figures['tools']:>7}{figures['tokens']:>9}{figures['tokens_full_json']:>11}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Context loaded up front (tokens = compact JSON chars / 4), configuration {report['config']}",
        "",
    ]
    lines.append(f"  {'':<28}{'tools':>7}{'tokens':>9}{'full JSON':>11}")
    gateway = report["gateway"]["tools_list"]
    lines.append(_row("gateway tools/list", gateway) + f"   ({', '.join(gateway['names'])})")
    aggregate = report.get("aggregate")
    if aggregate:
        lines.append(_row(f"aggregate view ({aggregate['agent']})", aggregate))
    lines.append("")
    for name, server in report["direct"].items():
        if "error" in server:
            lines.append(f"  {'direct: ' + name:<28}  unavailable: {server['error']}")
            continue
        lines.append(_row(f"direct: {name}", server))
    total = report["direct_total"]
    lines.append(_row("direct: all servers", total))
    lines.append("")
    if total["tokens"]:
        lines.append(
            f"  gateway / all servers directly: {report['ratio']:.2f} "
            f"({gateway['tokens']} vs {total['tokens']} tokens; {report['saved_tokens']:+d} tokens saved "
            "up front)"
        )
    demand = report["gateway"].get("on_demand")
    if demand and "error" not in demand:
        lines.append("")
        lines.append(f"  On demand through the gateway, as agent '{demand['agent']}':")
        lines.append(
            f"    list_servers: {demand['list_servers_tokens']} tokens ({len(demand['servers'])} servers)"
        )
        for name, cost in demand["get_server_tools"].items():
            if "error" in cost:
                lines.append(f"    get_server_tools({name}): error: {cost['error']}")
            else:
                lines.append(f"    get_server_tools({name}): {cost['tokens']} tokens ({cost['tools']} tools)")
    elif demand:
        lines.append(f"  On demand as agent '{demand['agent']}': {demand['error']}")
    if report["incomplete"]:
        lines.append("")
        lines.append("  INCOMPLETE: some downstream servers could not be reached (see above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=DEMO_CONFIG,
        help=f"a directory with {MCP_CONFIG_NAME} and {RULES_NAME} (default: the bundled demo)",
    )
    parser.add_argument(
        "--agent",
        default="admin",
        help="agent for the on-demand discovery figures (default: admin; '' to skip)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    options = parser.parse_args(argv)
    config_dir = options.config.resolve()
    mcp_path, rules_path = config_dir / MCP_CONFIG_NAME, config_dir / RULES_NAME
    for path in (mcp_path, rules_path):
        if not path.is_file():
            parser.error(f"{path} does not exist")

    os.environ.setdefault("GATEWAY_PYTHON", sys.executable)
    servers = load_mcp_config(mcp_path).mcpServers
    with tempfile.TemporaryDirectory(prefix="context-tokens-") as work:
        env = {
            "GATEWAY_PYTHON": os.environ["GATEWAY_PYTHON"],
            "GATEWAY_MCP_CONFIG": str(mcp_path),
            "GATEWAY_RULES": str(rules_path),
            "GATEWAY_AUDIT_LOG": str(Path(work) / "audit.jsonl"),
            "GATEWAY_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        # Variables the configuration refers to (e.g. ${DEMO_TIMEZONE:-UTC}) reach the gateway too.
        env.update({key: value for key, value in os.environ.items() if key.startswith(("DEMO_", "NOTES_"))})

        async def every_side() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
            agent = options.agent or None
            gateway = await gateway_side(config_dir, env, agent)
            direct = await direct_side(config_dir, servers)
            aggregate = await aggregate_side(config_dir, env, rules_path, agent) if agent else None
            return gateway, direct, aggregate

        gateway, direct, aggregate = asyncio.run(every_side())

    reached = [server for server in direct.values() if "error" not in server]
    total = {
        "tools": sum(server["tools"] for server in reached),
        "tokens": sum(server["tokens"] for server in reached),
        "tokens_full_json": sum(server["tokens_full_json"] for server in reached),
    }
    report = {
        "config": _display(config_dir),
        "gateway": gateway,
        "direct": direct,
        "aggregate": aggregate,
        "direct_total": total,
        "ratio": round(gateway["tools_list"]["tokens"] / total["tokens"], 3) if total["tokens"] else None,
        "saved_tokens": total["tokens"] - gateway["tools_list"]["tokens"],
        "incomplete": len(reached) < len(direct),
    }
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 1 if report["incomplete"] else 0


if __name__ == "__main__":
    sys.exit(main())
