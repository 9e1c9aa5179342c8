"""Capture the tool-search corpus: the tools/list of real third-party MCP servers, as listed.

The search benchmark (benchmarks/bench_search.py) reads the committed corpus.json, so it runs
without these packages; this script is how that file was made and how to redo it. Install the
servers into a scratch directory outside the repository first:

    npm install --prefix SCRATCH/npm --ignore-scripts --save-exact <every npm package below>
    python -m venv SCRATCH/py && SCRATCH/py/bin/pip install <every PyPI package below in py/>
    python -m venv SCRATCH/py1 && SCRATCH/py1/bin/pip install 'mcp<2' <the two in py1/>
    python benchmarks/search/capture.py --prefix SCRATCH [--out benchmarks/search/corpus.json]

Each server is started over stdio with a placeholder credential where it insists on one (no
tool is called, nothing leaves the machine), initialized, and asked for tools/list with the
MCP Python SDK's own client; the definitions are saved exactly as the server sent them, with
the package, registry and installed version they came from. A server that does not start is
reported and left out; the script exits 1 if any did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

HERE = Path(__file__).resolve().parent
TIMEOUT = 60
PLACEHOLDER = "placeholder-not-a-credential"


@dataclass(frozen=True)
class Source:
    """One server: where it comes from and how it starts (paths relative to the prefix)."""

    name: str
    registry: str  # "npm" or "pypi"
    package: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _node(package: str, entry: str) -> list[str]:
    return ["node", f"npm/node_modules/{package}/{entry}"]


SOURCES = [
    Source("filesystem", "npm", "@modelcontextprotocol/server-filesystem",
           [*_node("@modelcontextprotocol/server-filesystem", "dist/index.js"), "{workdir}"]),
    Source("memory", "npm", "@modelcontextprotocol/server-memory",
           _node("@modelcontextprotocol/server-memory", "dist/index.js"),
           {"MEMORY_FILE_PATH": "{workdir}/memory.jsonl"}),
    Source("everything", "npm", "@modelcontextprotocol/server-everything",
           [*_node("@modelcontextprotocol/server-everything", "dist/index.js"), "stdio"]),
    Source("sequential-thinking", "npm", "@modelcontextprotocol/server-sequential-thinking",
           _node("@modelcontextprotocol/server-sequential-thinking", "dist/index.js")),
    Source("github", "npm", "@modelcontextprotocol/server-github",
           _node("@modelcontextprotocol/server-github", "dist/index.js"),
           {"GITHUB_PERSONAL_ACCESS_TOKEN": PLACEHOLDER}),
    Source("gitlab", "npm", "@modelcontextprotocol/server-gitlab",
           _node("@modelcontextprotocol/server-gitlab", "dist/index.js"),
           {"GITLAB_PERSONAL_ACCESS_TOKEN": PLACEHOLDER}),
    Source("slack", "npm", "@modelcontextprotocol/server-slack",
           _node("@modelcontextprotocol/server-slack", "dist/index.js"),
           {"SLACK_BOT_TOKEN": PLACEHOLDER, "SLACK_TEAM_ID": "T00000000"}),
    Source("puppeteer", "npm", "@modelcontextprotocol/server-puppeteer",
           _node("@modelcontextprotocol/server-puppeteer", "dist/index.js")),
    Source("brave-search", "npm", "@modelcontextprotocol/server-brave-search",
           _node("@modelcontextprotocol/server-brave-search", "dist/index.js"),
           {"BRAVE_API_KEY": PLACEHOLDER}),
    Source("google-maps", "npm", "@modelcontextprotocol/server-google-maps",
           _node("@modelcontextprotocol/server-google-maps", "dist/index.js"),
           {"GOOGLE_MAPS_API_KEY": PLACEHOLDER}),
    Source("postgres", "npm", "@modelcontextprotocol/server-postgres",
           [*_node("@modelcontextprotocol/server-postgres", "dist/index.js"),
            "postgresql://127.0.0.1:1/none"]),
    Source("playwright", "npm", "@playwright/mcp", _node("@playwright/mcp", "cli.js")),
    Source("desktop-commander", "npm", "@wonderwhy-er/desktop-commander",
           _node("@wonderwhy-er/desktop-commander", "dist/index.js")),
    Source("git-mcp", "npm", "@cyanheads/git-mcp-server",
           _node("@cyanheads/git-mcp-server", "dist/index.js"),
           {"MCP_TRANSPORT_TYPE": "stdio", "MCP_LOG_LEVEL": "error"}),
    Source("context7", "npm", "@upstash/context7-mcp", _node("@upstash/context7-mcp", "dist/index.js")),
    Source("tavily", "npm", "tavily-mcp", _node("tavily-mcp", "build/index.js"),
           {"TAVILY_API_KEY": PLACEHOLDER}),
    Source("firecrawl", "npm", "firecrawl-mcp", _node("firecrawl-mcp", "dist/index.js"),
           {"FIRECRAWL_API_KEY": PLACEHOLDER}),
    Source("exa", "npm", "exa-mcp-server", _node("exa-mcp-server", "dist/stdio.cjs"),
           {"EXA_API_KEY": PLACEHOLDER}),
    Source("mcp-fetch", "npm", "@kazuph/mcp-fetch", _node("@kazuph/mcp-fetch", "dist/index.js")),
    Source("fetch", "pypi", "mcp-server-fetch", ["py/bin/python", "-m", "mcp_server_fetch"]),
    Source("git", "pypi", "mcp-server-git", ["py/bin/python", "-m", "mcp_server_git"]),
    Source("time", "pypi", "mcp-server-time", ["py/bin/python", "-m", "mcp_server_time"]),
    Source("sqlite", "pypi", "mcp-server-sqlite",
           ["py1/bin/mcp-server-sqlite", "--db-path", "{workdir}/corpus.db"]),
    Source("duckduckgo", "pypi", "duckduckgo-mcp-server", ["py/bin/duckduckgo-mcp-server"]),
    Source("arxiv", "pypi", "arxiv-mcp-server",
           ["py1/bin/arxiv-mcp-server", "--storage-path", "{workdir}/papers"]),
]  # fmt: skip


def installed_version(source: Source, prefix: Path) -> str:
    """The version installed under the prefix, read from the package's own metadata."""
    if source.registry == "npm":
        manifest = prefix / "npm" / "node_modules" / source.package / "package.json"
        return str(json.loads(manifest.read_text())["version"])
    python = prefix / source.command[0].split("/")[0] / "bin" / "python"  # its venv's, not this one's
    script = f"from importlib.metadata import version; print(version({source.package!r}))"
    return subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def _fill(text: str, prefix: Path, workdir: str) -> str:
    return text.replace("{workdir}", workdir)


async def capture(source: Source, prefix: Path, workdir: str) -> dict[str, Any]:
    command = [_fill(part, prefix, workdir) for part in source.command]
    executable = command[0] if command[0] == "node" else str(prefix / command[0])
    if command[0] == "node":
        command[1] = str(prefix / command[1])
    params = StdioServerParameters(
        command=executable,
        args=command[1:],
        env={key: _fill(value, prefix, workdir) for key, value in source.env.items()},
        cwd=workdir,
    )
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write), ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), TIMEOUT)
            tools: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = await asyncio.wait_for(
                    session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    ),
                    TIMEOUT,
                )
                tools += [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
    return {
        "name": source.name,
        "registry": source.registry,
        "package": source.package,
        "version": installed_version(source, prefix),
        "tools": tools,
    }


async def capture_all(prefix: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    servers, failed = [], {}
    for source in SOURCES:
        with tempfile.TemporaryDirectory(prefix="capture-") as workdir:
            try:
                servers.append(await capture(source, prefix, workdir))
            except Exception as exc:  # reported, and the server left out
                failed[source.name] = f"{type(exc).__name__}: {exc}"[:300]
        print(
            f"{source.name}: {len(servers[-1]['tools']) if source.name not in failed else failed[source.name]}",
            file=sys.stderr,
        )
    return servers, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, required=True, help="the scratch directory the servers are in")
    parser.add_argument("--out", type=Path, default=HERE / "corpus.json")
    options = parser.parse_args(argv)
    servers, failed = asyncio.run(capture_all(options.prefix.resolve()))
    corpus = {
        "about": "tools/list of third-party MCP servers as each listed them; made by capture.py",
        "servers": servers,
    }
    options.out.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")
    total = sum(len(server["tools"]) for server in servers)
    print(f"{len(servers)} servers, {total} tools -> {options.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
