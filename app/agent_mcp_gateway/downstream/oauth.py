"""OAuth 2.1 tokens for a protected HTTP downstream, per agent or for the gateway.

The MCP SDK's client credentials provider (`ClientCredentialsOAuthProvider`, the MCP OAuth
client-credentials extension) does the protocol: on a 401 it reads the server's RFC 9728
protected-resource metadata, then its authorization server's RFC 8414 metadata, refuses
metadata whose `issuer` is not the configured one (the token is bound to that issuer, and the
client secret is only ever sent there), asks for a token for the server's resource (RFC 8707)
and retries; on a 403 `insufficient_scope` it asks again for the scopes the challenge names
(step-up). It is the `httpx` auth of the SDK session's own client.

The gateway's calls go out beside that session on aiohttp (`downstream.http.HttpCalls`), so
`OAuthSession` drives the same provider for them: `authorization()` gives the header to send
(a cached token, renewed shortly before it expires), and after a 401 or 403 `challenged()`
runs the provider's flow with that answer and says whether one retry is worth it. Tokens live
in memory only, one cache per downstream session, never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Protocol

import httpx2
from mcp.client.auth import OAuthFlowError, OAuthTokenError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from agent_mcp_gateway.access.logins import LoginStore, LoginStoreError
from agent_mcp_gateway.compat import TokenExchangeProvider
from agent_mcp_gateway.config import OAuthClient, OAuthConfig

# The agent's current inbound token, for a token exchange (None: it presented none).
SubjectToken = Callable[[], str | None]

log = logging.getLogger("agent_mcp_gateway.downstream")

# A token is renewed this long before it expires (at most a tenth of its lifetime), so a call
# never sets out with a token that lapses on the way.
RENEW_BEFORE_SECONDS = 30.0
TIMEOUT = httpx2.Timeout(15.0)


class AuthorizationFailed(ConnectionError):
    """No token could be had: the reason names the step, never a secret."""


class _Memory:
    """The provider's token storage: this process's memory, and when the token was issued."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.issued_at = 0.0

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens, self.issued_at = tokens, time.time()

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        return None


class DownstreamTokens(Protocol):
    """What an HTTP downstream session asks of its tokens, however they are obtained."""

    @property
    def provider(self) -> httpx2.Auth: ...

    async def authorization(self, http: httpx2.AsyncClient) -> str: ...

    async def challenged(self, http: httpx2.AsyncClient, status: int, headers: Mapping[str, str]) -> str: ...


class OAuthSession:
    """The tokens of one downstream session: obtained with one client, for one server."""

    def __init__(
        self, server_url: str, config: OAuthConfig, client: OAuthClient, subject: SubjectToken | None = None
    ) -> None:
        self._storage = _Memory()
        arguments = (
            server_url,
            self._storage,
            client.client_id,
            client.client_secret.get_secret_value(),
            client.token_endpoint_auth_method,
            config.scope,
            config.issuer,
        )
        self.provider = (
            TokenExchangeProvider(*arguments, subject=subject)
            if subject is not None
            else ClientCredentialsOAuthProvider(*arguments)
        )
        self.server_url = server_url
        self.client_id = client.client_id

    async def authorization(self, http: httpx2.AsyncClient) -> str:
        """The `Authorization` header for the next call: the cached token while it is good,
        else a new one."""
        context = self.provider.context
        expiry = context.token_expiry_time
        if expiry is not None and self._storage.tokens is not None:
            lifetime = max(0.0, expiry - self._storage.issued_at)
            if time.time() >= expiry - min(RENEW_BEFORE_SECONDS, lifetime / 10):
                context.clear_tokens()
        return await self._drive(http, None)

    async def challenged(self, http: httpx2.AsyncClient, status: int, headers: Mapping[str, str]) -> str:
        """A call was answered 401 or 403: run the flow with that answer (re-discovery and a
        new token on a 401, the challenged scopes on a 403 `insufficient_scope`); the header
        to retry once with."""
        return await self._drive(http, httpx2.Response(status, headers=list(headers.items())))

    async def _drive(self, http: httpx2.AsyncClient, answer: httpx2.Response | None) -> str:
        """Run the provider's flow for a stand-in of the call: the call itself is answered with
        `answer` (or, when it would go out without a token, a bare 401), every other request
        the flow makes (metadata, token) is sent. The header the call is retried with is the
        outcome."""
        call = httpx2.Request("POST", self.server_url)
        flow = self.provider.async_auth_flow(call)
        tried = False
        try:
            outgoing = await flow.__anext__()
            while True:
                if outgoing is call:
                    header = call.headers.get("authorization")
                    if tried or (answer is None and header is not None):
                        if header is None:
                            raise AuthorizationFailed("the authorization server issued no token")
                        return header
                    tried = True
                    response = answer if answer is not None else httpx2.Response(401)
                    response.request = call
                else:
                    response = await http.send(outgoing)
                    await response.aread()
                outgoing = await flow.asend(response)
        except StopAsyncIteration:
            raise AuthorizationFailed("the authorization flow ended without a token") from None
        except (OAuthFlowError, OAuthTokenError) as exc:
            # The SDK's reasons name URLs and the server's error, never the client secret.
            log.warning(
                "downstream authorization failed",
                extra={"url": self.server_url, "client_id": self.client_id, "error": str(exc)[:300]},
            )
            raise AuthorizationFailed(f"authorization failed: {_kind(exc)}") from None
        except httpx2.HTTPError as exc:
            raise AuthorizationFailed(f"authorization failed: {type(exc).__name__}") from None
        finally:
            await flow.aclose()


def _kind(exc: Exception) -> str:
    text = str(exc)
    if "issuer" in text.lower():
        return "the authorization server is not the configured issuer"
    if isinstance(exc, OAuthTokenError):
        return "the authorization server refused the token request"
    return type(exc).__name__


class LoginSession:
    """The tokens of a stored login (`auth login`): an access token from its refresh token,
    renewed before it expires and after a 401; a rotated refresh token is stored again."""

    def __init__(self, store: LoginStore | None, server: str, agent: str) -> None:
        self.store, self.server, self.agent = store, server, agent
        self._access: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def provider(self) -> httpx2.Auth:
        return _LoginAuth(self)

    async def authorization(self, http: httpx2.AsyncClient) -> str:
        if self._access is not None and time.time() < self._renew_at:
            return f"Bearer {self._access}"
        return await self._refresh(http)

    async def challenged(self, http: httpx2.AsyncClient, status: int, headers: Mapping[str, str]) -> str:
        if status == 403:
            raise AuthorizationFailed(
                "the stored login does not grant what the server asks; log in again with the scope it names"
            )
        return await self._refresh(http)

    async def _refresh(self, http: httpx2.AsyncClient) -> str:
        async with self._lock:
            again = f"run 'agent-mcp-gateway auth login {self.server} --agent {self.agent}'"
            if self.store is None:
                raise AuthorizationFailed("stored logins need GATEWAY_CREDENTIALS_KEY to be set")
            try:
                found = self.store.find(self.server, self.agent)
            except LoginStoreError as exc:
                raise AuthorizationFailed(str(exc)) from None
            if found is None:
                raise AuthorizationFailed(f"no login is stored for this server; {again}")
            login, refresh = found
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": login.client_id,
                "resource": login.resource,
            }
            response = await http.post(login.token_endpoint, data=form)
            if response.status_code != 200:
                self._access = None
                raise AuthorizationFailed(f"the stored login was refused (revoked or expired); {again}")
            tokens = response.json()
            if isinstance(tokens.get("refresh_token"), str) and tokens["refresh_token"] != refresh:
                self.store.rotate(login, tokens["refresh_token"])
            self._access = str(tokens["access_token"])
            lifetime = float(tokens.get("expires_in") or 300)
            self._renew_at = time.time() + lifetime - min(RENEW_BEFORE_SECONDS, lifetime / 10)
            return f"Bearer {self._access}"


class _LoginAuth(httpx2.Auth):
    """A stored login as the SDK session's httpx auth: the header, and one retry after a 401."""

    def __init__(self, session: LoginSession) -> None:
        self.session = session

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            request.headers["authorization"] = await self.session.authorization(http)
            response = yield request
            if response.status_code == 401:
                request.headers["authorization"] = await self.session.challenged(http, 401, response.headers)
                yield request


def oauth_session(
    server_url: str,
    config: OAuthConfig | None,
    own: OAuthClient | None,
    subject: SubjectToken | None,
    login: tuple[LoginStore | None, str, str] | None = None,
) -> DownstreamTokens | None:
    """The tokens a downstream session uses: with the agent's own client (`own`) if it has
    one, else the gateway's; for a token exchange, the gateway's client exchanging `subject`
    (the owning agent's inbound token); for a login, the stored login of (store, server,
    agent). None for a server without `auth.oauth`, or without a client to use (its calls then
    go out without a token)."""
    if config is None:
        return None
    if config.grant == "authorization_code":
        return LoginSession(*login) if login is not None else LoginSession(None, server_url, "*")
    if config.grant == "token-exchange":
        assert config.client is not None  # the configuration requires it
        return OAuthSession(server_url, config, config.client, subject or (lambda: None))
    client = own or config.client
    return OAuthSession(server_url, config, client) if client is not None else None
