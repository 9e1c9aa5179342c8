"""Demo: one protected downstream, two agents, two identities.

    .venv/bin/python ops/demo_identities.py

Starts a protected MCP server (bearer tokens checked by fastmcp's token verification; its
`whoami` tool says whose token called), then the gateway over HTTP in front of it with
`"credentials": "per-agent"`: agent `researcher` has its own token for the server from an
environment variable, agent `backend` from a secret file, agent `intern` none. It calls
`whoami` as each agent through the gateway, prints what the downstream saw, and stops both.
Needs only the gateway's runtime dependencies; everything runs on loopback ports and in a
temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVER_FLAG = "--serve-protected"


def serve_protected(port: int, tokens_file: Path) -> None:
    """The protected downstream: each token names a person (its `sub`)."""
    os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
    from fastmcp import FastMCP
    from fastmcp.server.auth.providers.jwt import StaticTokenVerifier
    from fastmcp.server.dependencies import get_access_token

    mcp = FastMCP("protected-demo", auth=StaticTokenVerifier(json.loads(tokens_file.read_text())))

    @mcp.tool
    def whoami() -> str:
        """Whose token called."""
        token = get_access_token()
        return str(token.claims.get("sub")) if token is not None else "nobody"

    mcp.run(transport="http", host="127.0.0.1", port=port, path="/mcp", show_banner=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited early")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not start within 120 s")


async def whoami(gateway: str, agent: str) -> str:
    from fastmcp import Client
    from mcp import MCPError

    async with Client(f"{gateway}/mcp", timeout=60) as client:
        try:
            result = await client.call_tool_mcp(
                "execute_tool", {"agent_id": agent, "server": "protected", "tool": "whoami", "args": {}}
            )
        except MCPError as exc:
            return f"refused: {exc.message}"
    return str(getattr(result.content[0], "text", "")) if result.content else "(no answer)"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="identities-") as folder:
        root = Path(folder)
        tokens = {agent: secrets.token_urlsafe(24) for agent in ("researcher", "backend")}
        people = {"researcher": "ada (researcher's account)", "backend": "svc-backend (backend's account)"}
        (root / "tokens.json").write_text(
            json.dumps({tokens[a]: {"client_id": a, "sub": people[a], "scopes": []} for a in tokens})
        )
        (root / "backend.token").write_text(tokens["backend"] + "\n")
        server_port, gateway_port = free_port(), free_port()
        (root / ".mcp.json").write_text(
            json.dumps(
                {
                    "mcpServers": {
                        "protected": {
                            "description": "a protected demo server",
                            "url": f"http://127.0.0.1:{server_port}/mcp",
                            "credentials": "per-agent",
                        }
                    }
                }
            )
        )
        bearer = {
            "researcher": "Bearer ${RESEARCHER_DOWNSTREAM_TOKEN}",
            "backend": "Bearer ${file:backend.token}",
        }
        agents: dict[str, object] = {
            agent: {
                "allow": {"servers": ["*"]},
                "credentials": {"protected": {"headers": {"Authorization": value}}},
            }
            for agent, value in bearer.items()
        }
        agents["intern"] = {"allow": {"servers": ["*"]}}
        (root / ".mcp-gateway-rules.json").write_text(json.dumps({"agents": agents}))
        server = subprocess.Popen(
            [sys.executable, __file__, SERVER_FLAG, str(server_port), str(root / "tokens.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {
            **os.environ,
            "GATEWAY_TRANSPORT": "http",
            "GATEWAY_HTTP_PORT": str(gateway_port),
            "GATEWAY_MCP_CONFIG": str(root / ".mcp.json"),
            "GATEWAY_RULES": str(root / ".mcp-gateway-rules.json"),
            "GATEWAY_AUDIT_LOG": str(root / "audit.jsonl"),
            "GATEWAY_LOG_LEVEL": "WARNING",
            "RESEARCHER_DOWNSTREAM_TOKEN": tokens["researcher"],
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "agent_mcp_gateway"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{gateway_port}"
        try:
            wait_for(f"http://127.0.0.1:{server_port}/mcp", server, "the protected demo server")
            wait_for(f"{base}/ready", gateway, "the gateway")
            print(f"protected downstream: http://127.0.0.1:{server_port}/mcp; gateway: {base}/mcp")
            for agent in ("researcher", "backend", "intern"):
                print(f"{agent:>10} -> whoami: {asyncio.run(whoami(base, agent))}")
        finally:
            for process in (gateway, server):
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == SERVER_FLAG:
        serve_protected(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(main())
