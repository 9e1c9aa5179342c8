"""A protected MCP server (fastmcp's auth support): every request needs a bearer token, and the
tools say who called.

    protected.py --http PORT --tokens FILE
        static tokens: FILE maps each token to {"client_id", "sub", "scopes"}
    protected.py --http PORT --issuer URL --jwks URL --audience AUD
        JWT access tokens of a real authorization server, checked against its JWKS (fastmcp's
        JWTVerifier), with RFC 9728 metadata naming that server

`whoami` reports the token's subject, client and scopes; `admin_action` needs the `admin` scope
on top: without it the HTTP request is answered 403 with `WWW-Authenticate: Bearer
error="insufficient_scope", scope="..."`, the MCP specification's step-up hint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

import uvicorn
from fastmcp import FastMCP
from fastmcp.server.auth import RemoteAuthProvider, TokenVerifier
from fastmcp.server.auth.providers.jwt import JWTVerifier, StaticTokenVerifier
from fastmcp.server.dependencies import get_access_token

BASE_SCOPE = "mcp"
ADMIN_SCOPE = "admin"


def caller() -> dict[str, Any]:
    token = get_access_token()
    assert token is not None  # the auth middleware let no request without one through
    return {
        "subject": token.claims.get("sub"),
        "client_id": token.client_id,
        "scopes": sorted(token.scopes),
        "token_id": token.claims.get("jti"),
        "actor": token.claims.get("act"),
    }


def build(verifier: TokenVerifier) -> FastMCP:
    mcp = FastMCP("protected", auth=verifier)

    @mcp.tool
    def whoami() -> dict[str, Any]:
        """Who the bearer token names."""
        return caller()

    @mcp.tool
    def admin_action() -> dict[str, Any]:
        """Needs the admin scope."""
        return {"done": True, **caller()}

    return mcp


class StepUp:
    """Answers a `tools/call` of `admin_action` without the admin scope with 403 and the scope
    the request needs, before the MCP layer sees it."""

    def __init__(self, app: Any, verifier: TokenVerifier, metadata_url: str) -> None:
        self.app, self.verifier, self.metadata_url = app, verifier, metadata_url

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if await self._lacks_admin(scope, body):
            challenge = (
                f'Bearer error="insufficient_scope", scope="{BASE_SCOPE} {ADMIN_SCOPE}", '
                f'resource_metadata="{self.metadata_url}"'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"www-authenticate", challenge.encode()),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"error": "insufficient_scope"}'})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _lacks_admin(self, scope: dict[str, Any], body: bytes) -> bool:
        try:
            message = json.loads(body)
        except ValueError:
            return False
        if not (
            isinstance(message, dict)
            and message.get("method") == "tools/call"
            and (message.get("params") or {}).get("name") == "admin_action"
        ):
            return False
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode()
        token = await self.verifier.verify_token(authorization.removeprefix("Bearer ").strip())
        return token is not None and ADMIN_SCOPE not in token.scopes


def main() -> None:
    parser = argparse.ArgumentParser(description="protected MCP test server")
    parser.add_argument("--http", type=int, required=True, metavar="PORT")
    parser.add_argument("--tokens", type=Path, help="static tokens (JSON)")
    parser.add_argument("--issuer")
    parser.add_argument("--jwks")
    parser.add_argument("--audience")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    base_url = f"http://127.0.0.1:{args.http}"
    verifier: TokenVerifier
    if args.tokens:
        verifier = StaticTokenVerifier(json.loads(args.tokens.read_text()), required_scopes=[BASE_SCOPE])
        auth: TokenVerifier = verifier
    else:
        verifier = JWTVerifier(
            jwks_uri=args.jwks, issuer=args.issuer, audience=args.audience, required_scopes=[BASE_SCOPE]
        )
        auth = RemoteAuthProvider(
            token_verifier=verifier,
            authorization_servers=[args.issuer],
            base_url=base_url,
            scopes_supported=[BASE_SCOPE, ADMIN_SCOPE],
        )
    app = build(auth).http_app(path="/mcp")
    metadata_url = f"{base_url}/.well-known/oauth-protected-resource/mcp"
    uvicorn.run(StepUp(app, verifier, metadata_url), host="127.0.0.1", port=args.http, log_level="warning")


if __name__ == "__main__":
    main()
