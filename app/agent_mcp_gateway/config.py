"""Configuration: the downstream servers file (`.mcp.json`) and the rules file.

Both files are found, read, substituted and validated here, and every failure becomes one
`ConfigError` that names the file, the JSON path inside it and what is wrong, so an operator
can fix the file without reading a traceback.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

MCP_CONFIG_NAME = ".mcp.json"
RULES_NAME = ".mcp-gateway-rules.json"
MCP_CONFIG_ENV = "GATEWAY_MCP_CONFIG"
RULES_ENV = "GATEWAY_RULES"
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
PREFIX_PATTERN = r"^[A-Za-z0-9_.-]*$"
NAME_SEPARATOR = "__"
Isolation = Literal["agent", "session", "shared"]
# The protocol era a downstream is spoken to in: the newest it supports, or one forced.
Protocol = Literal["auto", "2026-07-28", "2025-11-25"]
M = TypeVar("M", bound=BaseModel)
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A mounted secret in a credential header: `${file:/run/secrets/token}`, read at load time.
_FILE_REFERENCE = re.compile(r"\$\{file:([^}]+)\}")
# RFC 9110 field names; a value may not break the header block.
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# JSON has no comments: any object in either file may carry this key for the reader.
COMMENT_KEY = "$comment"


class ConfigError(Exception):
    """A configuration file that cannot be used, with where and why."""

    def __init__(self, file: str | Path, path: str, reason: str) -> None:
        self.file = str(file)
        self.path = path
        self.reason = reason
        where = f"{self.file}: {path}" if path else self.file
        super().__init__(f"{where}: {reason}")


def user_config_dir() -> Path:
    """The per-user directory searched last; `init` writes the example files here."""
    return Path.home() / ".config" / "agent-mcp-gateway"


# --- downstream servers ---------------------------------------------------------------------


TokenEndpointAuth = Literal["client_secret_basic", "client_secret_post"]
BASIC_AUTH: TokenEndpointAuth = "client_secret_basic"


class OAuthClient(BaseModel):
    """An OAuth client registered at a downstream's authorization server: the gateway's own
    (`auth.oauth` in the servers file) or an agent's (`credentials.<server>.oauth` in the rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: Annotated[str, StringConstraints(min_length=1)]
    client_secret: SecretStr
    token_endpoint_auth_method: TokenEndpointAuth = BASIC_AUTH


class OAuthConfig(BaseModel):
    """How the gateway obtains tokens for a protected HTTP downstream (OAuth 2.1 client
    credentials): the authorization server it must be (`issuer`, checked against the server's
    RFC 9728 and RFC 8414 metadata), the scope to ask for first, and the gateway's own client
    (optional when every agent brings its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Annotated[str, StringConstraints(pattern=r"^https?://")]
    scope: str | None = None
    client_id: Annotated[str, StringConstraints(min_length=1)] | None = None
    client_secret: SecretStr | None = None
    token_endpoint_auth_method: TokenEndpointAuth = BASIC_AUTH
    # "token-exchange" (RFC 8693): each JWT-authenticated agent's inbound token is exchanged, by
    # the gateway's client, for a token of this server's audience that names the agent.
    # "authorization_code": a person consents once (`agent-mcp-gateway auth login`), and the
    # stored refresh token (per agent, else the gateway's) is used; `client_id` is a public client.
    grant: Literal["client_credentials", "token-exchange", "authorization_code"] = "client_credentials"

    @model_validator(mode="after")
    def _whole_client(self) -> OAuthConfig:
        if self.grant == "authorization_code":
            if self.client_id is None:
                raise ValueError("a login ('authorization_code') needs the public client's 'client_id'")
            return self
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("'client_id' and 'client_secret' go together")
        if self.grant == "token-exchange" and self.client_id is None:
            raise ValueError("a token exchange needs the gateway's own 'client_id' and 'client_secret'")
        return self

    @property
    def client(self) -> OAuthClient | None:
        """The gateway's own confidential client, if configured."""
        if self.client_id is None or self.client_secret is None:
            return None
        return OAuthClient(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method=self.token_endpoint_auth_method,
        )


class ServerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    oauth: OAuthConfig


class ServerConfig(BaseModel):
    """One downstream server: a stdio program (`command`) or a Streamable HTTP URL (`url`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_ms: Annotated[StrictInt, Field(gt=0)] | None = None
    # The largest message (a tool result, as JSON) the gateway takes from this server: 32 MiB.
    max_result_bytes: Annotated[StrictInt, Field(gt=0)] = 32 * 1024 * 1024
    # How the aggregate view names this server's tools and prompts: `{prefix}__{name}`; the
    # server's name when unset, "" for bare names.
    prefix: Annotated[str, StringConstraints(pattern=PREFIX_PATTERN)] | None = None
    # Pin each tool's definition at first sight and quarantine it when it changes (pins.py).
    # true: pin each tool at first sight; "strict": pin at the server's first sight, hold new tools.
    pin_tools: StrictBool | Literal["strict"] = False
    # Whose downstream session a call uses: one per agent, one per client session, or one shared
    # by all agents (for caller-agnostic servers); unset: the GATEWAY_ISOLATION default. An idle
    # instance is closed after `idle_timeout` seconds; at most `max_instances` run at once
    # (unset: GATEWAY_IDLE_TIMEOUT, GATEWAY_MAX_INSTANCES).
    isolation: Isolation | None = None
    idle_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_instances: Annotated[StrictInt, Field(gt=0)] | None = None
    # "per-agent": only agents with credentials of their own for this server (the rules file's
    # `agents.<id>.credentials.<server>`) may call it; unset, others use the server's headers.
    credentials: Literal["per-agent"] | None = None
    # OAuth 2.1 for a protected HTTP server: tokens obtained per agent or for the gateway.
    auth: ServerAuth | None = None
    # "auto": 2026-07-28 (`server/discover`) when the server speaks it, else the handshake;
    # a version forces that era (a server that does not speak it fails to connect).
    protocol: Protocol = "auto"
    # Claude's format carries these; the transport follows from command/url.
    transport: str | None = Field(default=None, exclude=True)
    type: str | None = Field(default=None, exclude=True)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        # A prefix holds no "__", so a public name splits back at its first "__".
        if value and NAME_SEPARATOR in value:
            raise ValueError(f"'prefix' must not contain {NAME_SEPARATOR!r}")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if self.command and self.url:
            raise ValueError("has both 'command' and 'url'; a server is either stdio or HTTP")
        if not self.command and not self.url:
            raise ValueError("needs 'command' (stdio) or 'url' (Streamable HTTP)")
        if self.url and (self.args or self.env or self.cwd):
            raise ValueError("'args', 'env' and 'cwd' are for stdio servers, not 'url' ones")
        if self.command and self.headers:
            raise ValueError("'headers' are for 'url' servers, not stdio ones")
        if self.command and self.credentials:
            raise ValueError("'credentials' are headers for 'url' servers, not stdio ones")
        if self.command and self.auth:
            raise ValueError("'auth' is for 'url' servers, not stdio ones")
        if self.url and not re.match(r"^https?://", self.url):
            raise ValueError("'url' must start with http:// or https://")
        return self

    @property
    def per_agent(self) -> bool:
        """Whether every agent needs a session of its own here: its own credentials are
        required, its own token is exchanged, or its own login may be used."""
        exchanges = self.auth is not None and self.auth.oauth.grant != "client_credentials"
        return self.credentials == "per-agent" or exchanges

    @property
    def kind(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command else "http"

    def public_prefix(self, name: str) -> str:
        return name if self.prefix is None else self.prefix

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class McpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mcpServers: dict[str, ServerConfig]  # noqa: N815 (the key Claude's format uses)

    @field_validator("mcpServers")
    @classmethod
    def _names(cls, servers: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in servers:
            if not re.match(AGENT_ID_PATTERN, name):
                raise ValueError(f"server name {name!r} must match {AGENT_ID_PATTERN}")
            if NAME_SEPARATOR in name and servers[name].prefix is None:
                raise ValueError(
                    f"server name {name!r} contains {NAME_SEPARATOR!r}, which the aggregate view "
                    "uses to join server and tool names; set a 'prefix' without it"
                )
        owners: dict[str, str] = {}
        for name, server in servers.items():
            prefix = server.public_prefix(name)
            other = owners.setdefault(prefix, name) if prefix else name
            if other != name:
                raise ValueError(
                    f"servers {other!r} and {name!r} both name their tools with the prefix {prefix!r}; "
                    "set a distinct 'prefix' on one of them"
                )
        return servers


# --- policy rules -----------------------------------------------------------------------------

Pattern = Annotated[str, StringConstraints(min_length=1)]


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: tuple[Pattern, ...] = ()
    tools: dict[str, tuple[Pattern, ...]] = Field(default_factory=dict)


TOKEN_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"  # noqa: S105 (a pattern, not a secret)
TokenHash = Annotated[str, StringConstraints(pattern=TOKEN_HASH_PATTERN)]


View = Literal["discovery", "aggregate"]
HeaderName = Annotated[str, StringConstraints(pattern=_HEADER_NAME)]


class DownstreamCredentials(BaseModel):
    """An agent's own credentials for one HTTP server, used on that agent's downstream session
    only: headers (in place of the server's of the same name) and, for a server with
    `auth.oauth`, the agent's own OAuth client. Secrets are SecretStr: no repr, dump or error
    message shows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    headers: dict[HeaderName, SecretStr] = Field(default_factory=dict)
    oauth: OAuthClient | None = None

    @model_validator(mode="after")
    def _something(self) -> DownstreamCredentials:
        if not self.headers and self.oauth is None:
            raise ValueError("needs 'headers' or 'oauth'")
        return self

    @field_validator("headers")
    @classmethod
    def _values(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in headers.items():
            text = value.get_secret_value()
            if not text.strip():
                raise ValueError(f"header {name!r} is empty")
            if "\r" in text or "\n" in text or "\0" in text:
                raise ValueError(f"header {name!r} holds a line break or NUL")
        return headers

    def plain(self) -> dict[str, str]:
        """The headers to send."""
        return {name: value.get_secret_value() for name, value in self.headers.items()}


class AgentRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    # discovery: the three gateway tools; aggregate: the allowed downstream tools themselves.
    view: View | None = None
    allow: RuleSet = RuleSet()
    deny: RuleSet = RuleSet()
    rate_limit: str | None = None
    max_sessions: Annotated[StrictInt, Field(gt=0)] | None = None  # else GATEWAY_MAX_SESSIONS_PER_AGENT
    # Hashes of the agent's bearer tokens ("sha256:<64 hex>"), never the tokens themselves.
    tokens: tuple[TokenHash, ...] = ()
    # Per server name: the agent's own credentials for that downstream (see DownstreamCredentials).
    credentials: dict[str, DownstreamCredentials] = Field(default_factory=dict)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            validate_rate_limit(value)
        return value


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deny_on_missing_agent: StrictBool = True
    view: View = "discovery"


# Asymmetric algorithms only: with HS* the rules file would hold the signing secret, and anyone
# who could read it could sign as any agent.
JWT_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
        "Ed448",
    }
)
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class JwtConfig(BaseModel):
    """An OAuth 2.1 / JWT issuer whose access tokens name the agent in one claim."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: NonEmpty
    # One audience, or a non-empty list of them: an empty list would switch the check off.
    audience: NonEmpty | Annotated[tuple[NonEmpty, ...], Field(min_length=1)]
    public_key: str | None = None
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    agent_claim: NonEmpty = "sub"
    authorization_servers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if bool(self.public_key) == bool(self.jwks_uri):
            raise ValueError("needs exactly one of 'public_key' (PEM) or 'jwks_uri'")
        if self.jwks_uri and not re.match(r"^https?://", self.jwks_uri):
            raise ValueError("'jwks_uri' must start with http:// or https://")
        if not self.algorithms:
            raise ValueError("'algorithms' must name at least one algorithm")
        for algorithm in self.algorithms:
            if algorithm.startswith("HS"):
                raise ValueError(
                    f"algorithm {algorithm!r} is symmetric: the rules file would hold the signing "
                    "secret; use an asymmetric algorithm (RS256, ES256, EdDSA, ...) with 'public_key' "
                    "or 'jwks_uri'"
                )
            if algorithm not in JWT_ALGORITHMS:
                raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(sorted(JWT_ALGORITHMS))}")
            if self.public_key:
                _check_public_key(self.public_key, algorithm)
        return self


def _check_public_key(pem: str, algorithm: str) -> None:
    """Refuse a `public_key` the verifier would refuse at every request: not a PEM public key
    (or certificate), or a key of another family than `algorithm` signs with."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.strip().encode()
    try:
        key = (
            x509.load_pem_x509_certificate(data).public_key()
            if b"BEGIN CERTIFICATE" in data
            else load_pem_public_key(data)
        )
    except (ValueError, TypeError):
        raise ValueError("'public_key' is not a PEM public key or certificate") from None
    families: dict[str, tuple[type, ...]] = {
        "RS": (rsa.RSAPublicKey,),
        "PS": (rsa.RSAPublicKey,),
        "ES": (ec.EllipticCurvePublicKey,),
        "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
    }
    if not isinstance(key, families[algorithm[:2]]):
        raise ValueError(f"'public_key' is not a key for algorithm {algorithm!r}")


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    jwt: JwtConfig | None = None


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: dict[str, AgentRules]
    defaults: Defaults = Defaults()
    auth: AuthConfig = AuthConfig()

    @field_validator("agents")
    @classmethod
    def _agent_ids(cls, agents: dict[str, AgentRules]) -> dict[str, AgentRules]:
        for agent_id in agents:
            if not re.match(AGENT_ID_PATTERN, agent_id):
                raise ValueError(f"agent id {agent_id!r} must match {AGENT_ID_PATTERN}")
        owners: dict[str, str] = {}
        for agent_id, agent in agents.items():
            for index, digest in enumerate(agent.tokens):
                other = owners.setdefault(digest, agent_id)
                if other != agent_id:
                    raise ValueError(
                        f"agents.{agent_id}.tokens[{index}] is also a token of agent {other!r}; "
                        "a token names exactly one agent"
                    )
        return agents

    def view_of(self, agent_id: str) -> View:
        agent = self.agents.get(agent_id)
        return agent.view if agent is not None and agent.view is not None else self.defaults.view

    def credentials_for(self, agent_id: str, server: str) -> DownstreamCredentials | None:
        """`agent_id`'s own credentials for `server`, if the rules give it any."""
        agent = self.agents.get(agent_id)
        return agent.credentials.get(server) if agent is not None else None

    @property
    def credentials_configured(self) -> bool:
        """Whether HTTP callers must authenticate (any token hash or a JWT issuer)."""
        return self.auth.jwt is not None or any(agent.tokens for agent in self.agents.values())


def validate_rate_limit(value: str) -> None:
    """Reject a limit string slowapi would only refuse at request time."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"rate limit {value!r} is not valid; use forms like '60/minute' or '10/second'"
        ) from None


# --- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """Both files, validated together; swapped as one value on reload."""

    mcp: McpConfig
    rules: RulesConfig
    mcp_path: Path
    rules_path: Path
    warnings: tuple[str, ...]

    @property
    def servers(self) -> dict[str, ServerConfig]:
        return self.mcp.mcpServers


def discover(explicit: Path | None, env_var: str, filename: str) -> Path:
    """Find a config file: the path from the settings (`env_var`), then the current directory,
    then the user config dir."""
    if explicit is not None:
        return explicit.expanduser()
    for candidate in (Path.cwd() / filename, user_config_dir() / filename):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        filename,
        "",
        f"not found; set {env_var}, or create it in the current directory or {user_config_dir()} "
        "('agent-mcp-gateway init' writes commented examples there)",
    )


def load(mcp_path: Path | None = None, rules_path: Path | None = None) -> GatewayConfig:
    """Both files; a path left out is discovered in the current and the user config directory."""
    mcp_path = discover(mcp_path, MCP_CONFIG_ENV, MCP_CONFIG_NAME)
    rules_path = discover(rules_path, RULES_ENV, RULES_NAME)
    mcp = load_mcp_config(mcp_path)
    rules = load_rules(rules_path)
    _check_credentials(mcp, rules, rules_path)
    return GatewayConfig(mcp, rules, mcp_path, rules_path, tuple(cross_check(mcp, rules)))


def load_mcp_config(path: Path) -> McpConfig:
    raw = _read_json(path)
    if isinstance(raw, dict):
        raw = _uncomment(raw, path, "")
        if isinstance(raw.get("mcpServers"), dict):
            raw["mcpServers"] = {
                name: _substitute(server, path, f"mcpServers.{name}", name)
                for name, server in _uncomment(raw["mcpServers"], path, "mcpServers").items()
            }
    return _validate(McpConfig, raw, path)


def load_rules(path: Path) -> RulesConfig:
    raw = _substitute(_read_json(path), path, "", None)
    if isinstance(raw, dict) and isinstance(raw.get("agents"), dict):
        for agent_id, agent in raw["agents"].items():
            if isinstance(agent, dict) and isinstance(agent.get("credentials"), dict):
                agent["credentials"] = _read_secret_files(
                    agent["credentials"], path, f"agents.{agent_id}.credentials"
                )
    return _validate(RulesConfig, raw, path)


def _read_secret_files(value: Any, file: Path, path: str) -> Any:
    """Replace each `${file:PATH}` in credential strings by that file's content, stripped of
    surrounding whitespace (a mounted secret's trailing newline). A relative PATH is relative to
    the rules file's folder. The error names the file, never what it holds."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            secret = Path(match.group(1).strip()).expanduser()
            secret = secret if secret.is_absolute() else file.parent / secret
            try:
                return secret.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    file, path, f"secret file {str(secret)!r} cannot be read ({exc.__class__.__name__})"
                ) from None

        return _FILE_REFERENCE.sub(replace, value)
    if isinstance(value, dict):
        return {k: _read_secret_files(v, file, _join(path, k)) for k, v in value.items()}
    return value


def _check_credentials(mcp: McpConfig, rules: RulesConfig, rules_path: Path) -> None:
    """Credentials for a stdio server, or an OAuth client for a server without `auth.oauth`,
    stop the load: they could never be used."""
    for agent_id, agent in rules.agents.items():
        for server, credentials in agent.credentials.items():
            config = mcp.mcpServers.get(server)
            where = f"agents.{agent_id}.credentials.{server}"
            if config is not None and config.kind != "http":
                raise ConfigError(
                    rules_path,
                    where,
                    f"server {server!r} is a stdio server; credentials are headers for 'url' servers",
                )
            if config is not None and credentials.oauth is not None and config.auth is None:
                raise ConfigError(
                    rules_path,
                    f"{where}.oauth",
                    f"server {server!r} has no 'auth.oauth' to use an OAuth client with",
                )


def cross_check(mcp: McpConfig, rules: RulesConfig) -> list[str]:
    """Rules (and credentials) naming servers that are not configured: likely typos, but not fatal."""
    from fnmatch import fnmatchcase

    names = list(mcp.mcpServers)
    warnings = []
    for agent_id, agent in rules.agents.items():
        for kind, ruleset in (("allow", agent.allow), ("deny", agent.deny)):
            entries = [(f"servers[{i}]", p) for i, p in enumerate(ruleset.servers)]
            entries += [(f"tools.{p}", p) for p in ruleset.tools]
            for where, pattern in entries:
                if not any(fnmatchcase(name, pattern) for name in names):
                    warnings.append(
                        f"agents.{agent_id}.{kind}.{where}: {pattern!r} matches no server in the servers file"
                    )
        warnings += [
            f"agents.{agent_id}.credentials.{server}: no such server in the servers file"
            for server in agent.credentials
            if server not in mcp.mcpServers
        ]
    return warnings


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot be read ({exc.__class__.__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}") from None


def _uncomment(value: dict[str, Any], file: Path, path: str) -> dict[str, Any]:
    """Drop an object's `$comment`, so models and maps (env, headers, tools) never see it."""
    if COMMENT_KEY not in value:
        return value
    if not isinstance(value[COMMENT_KEY], str):
        raise ConfigError(file, _join(path, COMMENT_KEY), "a comment must be a string")
    return {k: v for k, v in value.items() if k != COMMENT_KEY}


def _substitute(value: Any, file: Path, path: str, server: str | None) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string, naming the variable when unset.

    `$comment` entries are dropped first, so a comment may mention a variable without
    needing it set.
    """
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if default is not None:
                # As in the shell, `:-` also replaces a variable that is set but empty.
                return found or default
            if found is not None:
                return found
            owner = f" (server {server!r})" if server else ""
            raise ConfigError(file, path, f"environment variable {name} is not set and has no default{owner}")

        return _VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _substitute(v, file, _join(path, k), server) for k, v in _uncomment(value, file, path).items()
        }
    if isinstance(value, list):
        return [_substitute(v, file, f"{path}[{i}]", server) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _validate(model: type[M], raw: Any, file: Path) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(file, _json_path(first["loc"]), _reason(first)) from None


def _json_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a map key that is wrong itself
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = _join(path, str(part))
    return path or "(top level)"


# Pydantic names Python types ("a valid tuple", "instance of McpConfig"); say it in JSON terms.
_JSON_REASONS = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
}


def _reason(error: Any) -> str:
    kind, message = error["type"], error["msg"]
    return _JSON_REASONS.get(kind) or message.removeprefix("Value error, ")
