"""`agent-mcp-gateway auth login`: a person's consent for a downstream that needs one.

The OAuth 2.1 authorization code flow with PKCE (S256) and a loopback redirect (RFC 8252): the
server's RFC 9728 metadata names its authorization servers, the configured issuer must be one of
them and must be what its RFC 8414 metadata says; the person opens the printed URL, signs in and
consents; the answer comes back to a one-shot listener on 127.0.0.1, is checked (state, and the
RFC 9207 `iss` against the issuer), and the code is exchanged for tokens. Only the refresh
token is kept, encrypted (`access.logins`), for the gateway to use on the named agent's session.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx2
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    issuers_match,
)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from pydantic import ValidationError

from agent_mcp_gateway.access.logins import Login, LoginStore
from agent_mcp_gateway.config import OAuthConfig

CALLBACK_PATH = "/callback"
TIMEOUT = httpx2.Timeout(15.0)


class LoginFailed(Exception):
    """The login did not complete: one sentence naming the step."""


@dataclass(frozen=True)
class Discovered:
    resource: str
    metadata: OAuthMetadata


def discover(url: str, config: OAuthConfig, http: httpx2.Client) -> Discovered:
    """The server's resource and its authorization server's metadata, bound to `config.issuer`."""
    prm: ProtectedResourceMetadata | None = None
    for candidate in build_protected_resource_metadata_discovery_urls(None, url):
        response = http.get(candidate)
        if response.status_code == 200:
            try:
                prm = ProtectedResourceMetadata.model_validate_json(response.content)
                break
            except ValidationError:
                continue
    if prm is None:
        raise LoginFailed(f"{url} publishes no protected resource metadata (RFC 9728)")
    advertised = [str(server) for server in prm.authorization_servers]
    if not any(issuers_match(server, config.issuer) for server in advertised):
        raise LoginFailed(
            f"the server names {', '.join(advertised)} as its authorization server, not {config.issuer}"
        )
    for candidate in build_oauth_authorization_server_metadata_discovery_urls(config.issuer, url):
        response = http.get(candidate)
        if response.status_code != 200:
            continue
        metadata = OAuthMetadata.model_validate_json(response.content)
        if not issuers_match(str(metadata.issuer), config.issuer):
            raise LoginFailed(
                f"the authorization server's metadata names issuer {metadata.issuer}, not {config.issuer}"
            )
        return Discovered(str(prm.resource), metadata)
    raise LoginFailed(f"{config.issuer} publishes no authorization server metadata (RFC 8414)")


def _listener() -> tuple[HTTPServer, threading.Event, list[dict[str, list[str]]]]:
    """A one-shot loopback listener for the redirect: the server, an event set when the answer
    arrived, and where it is put."""
    arrived = threading.Event()
    answers: list[dict[str, list[str]]] = []

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            if parsed.path != CALLBACK_PATH:
                self.send_error(404)
                return
            answers.append(parse_qs(parsed.query))
            arrived.set()
            body = b"agent-mcp-gateway: login received; you may close this window.\n"
            self.send_response(200)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return HTTPServer(("127.0.0.1", 0), Callback), arrived, answers


def login(
    server: str,
    url: str,
    config: OAuthConfig,
    agent: str,
    store: LoginStore,
    show: Callable[[str], None],
    timeout: float,
) -> Login:
    """Run the flow for `agent`'s login to `server`; `show` is given the URL to open."""
    if config.client_id is None:
        raise LoginFailed(f"server {server!r} names no 'client_id' in auth.oauth to log in with")
    with httpx2.Client(timeout=TIMEOUT) as http:
        found = discover(url, config, http)
        metadata = found.metadata
        listener, arrived, answers = _listener()
        thread = threading.Thread(target=listener.serve_forever, daemon=True)
        thread.start()
        try:
            redirect_uri = f"http://127.0.0.1:{listener.server_address[1]}{CALLBACK_PATH}"
            verifier = secrets.token_urlsafe(64)
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            state = secrets.token_urlsafe(24)
            query = {
                "response_type": "code",
                "client_id": config.client_id,
                "redirect_uri": redirect_uri,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "resource": found.resource,
                "scope": " ".join(filter(None, [config.scope, "offline_access"])),
                "prompt": "consent",
            }
            show(f"{metadata.authorization_endpoint}?{urlencode(query)}")
            if not arrived.wait(timeout):
                raise LoginFailed(f"no answer from the authorization server within {timeout:.0f} s")
        finally:
            listener.shutdown()
            listener.server_close()
        answer = {name: values[0] for name, values in answers[0].items()}
        if answer.get("state") != state:
            raise LoginFailed("the answer's state is not this login's")
        issuer = answer.get("iss")
        if (issuer is not None or metadata.authorization_response_iss_parameter_supported) and not (
            issuer is not None and issuers_match(issuer, config.issuer)
        ):
            raise LoginFailed(f"the answer came from issuer {issuer!r}, not {config.issuer} (RFC 9207)")
        if "error" in answer:
            raise LoginFailed(f"the authorization server refused: {answer['error']}")
        response = http.post(
            str(metadata.token_endpoint),
            data={
                "grant_type": "authorization_code",
                "code": answer.get("code", ""),
                "redirect_uri": redirect_uri,
                "client_id": config.client_id,
                "code_verifier": verifier,
                "resource": found.resource,
            },
        )
        if response.status_code != 200:
            raise LoginFailed(f"the token request was refused (HTTP {response.status_code})")
        refresh = response.json().get("refresh_token")
        if not isinstance(refresh, str):
            raise LoginFailed("the authorization server issued no refresh token")
    revocation = metadata.revocation_endpoint
    saved = Login(
        server,
        agent,
        config.issuer,
        str(metadata.token_endpoint),
        str(revocation) if revocation is not None else None,
        config.client_id,
        found.resource,
        config.scope,
        time.time(),
    )
    store.save(saved, refresh)
    return saved


def logout(store: LoginStore, server: str, agent: str) -> Login | None:
    """Forget `agent`'s login to `server`, revoking its refresh token where the authorization
    server offers revocation (RFC 7009)."""
    found = store.find(server, agent)
    removed = store.remove(server, agent)
    if found is not None and removed is not None and found[0].revocation_endpoint:
        login, refresh = found
        with httpx2.Client(timeout=TIMEOUT) as http:
            http.post(
                str(login.revocation_endpoint),
                data={"token": refresh, "token_type_hint": "refresh_token", "client_id": login.client_id},
            )
    return removed
