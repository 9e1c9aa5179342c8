"""Settings: every `GATEWAY_*` environment variable as one typed, validated object.

Built once at start-up (`load_settings`) and passed down; no other module reads the environment
for its own setting. A bad value becomes one `SettingsError` line that names the variable, the
value and what is expected, so the operator fixes it without reading a traceback.

Two OpenTelemetry variables are read under their standard names (`OTEL_ENV`): whether traces
are exported, and as which service. The SDK reads the rest of `OTEL_*` itself.

Under Granian the worker process builds the same object again from the same environment; the
main process has already validated it, so the worker cannot fail where the parent did not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
DEFAULT_MAX_BODY = 4 * 2**20
# Settings read under OpenTelemetry's own variable names instead of GATEWAY_*.
OTEL_ENV = {"otel_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT", "otel_service_name": "OTEL_SERVICE_NAME"}


class SettingsError(Exception):
    """One environment variable with a value the gateway cannot use."""


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _rate_limit(value: str) -> str:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError("bad rate limit") from None
    return value


def _rate_limit_storage(value: str) -> str:
    """`memory`, or a Redis URL that redis-py accepts, with a host and a numeric database."""
    if value == "memory":
        return value
    from redis.asyncio.connection import parse_url

    parts = urlsplit(value)
    database = parts.path.strip("/")
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or not (database or "0").isdigit():
        raise ValueError("bad rate limit storage")
    try:
        parse_url(value)
    except ValueError:
        raise ValueError("bad rate limit storage") from None
    return value


def without_password(url: str) -> str:
    """`url` with its password (if any) shown as `***`, for output an operator may share."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def _host(value: str) -> str:
    bare = value.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        labels = bare.split(".")
        if not bare or not all(
            label and len(label) < 64 and label.replace("-", "").isalnum() for label in labels
        ):
            raise ValueError("bad host") from None
    return value


def _origin(values: list[str]) -> list[str]:
    for origin in values:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError("bad origin")
    return values


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]
Origins = Annotated[CommaList, AfterValidator(_origin)]
AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN)]

# What each variable expects, in the words of the one-line error.
EXPECTED: dict[str, str] = {
    "transport": "'stdio' or 'http'",
    "http_host": "an IP address or a host name",
    "http_port": "an integer from 1 to 65535",
    "cors_origins": "comma-separated origins such as https://app.example",
    "allowed_origins": "comma-separated origins such as https://app.example",
    "metrics_token": "a token of at least 16 characters",
    "credentials_key": "a Fernet key (32 random bytes, URL-safe base64: 44 characters)",
    "allowed_hosts": "comma-separated host names (optionally with :port) such as gateway.example",
    "max_body_bytes": "a positive integer (bytes)",
    "rate_limit": "a rate limit such as '600/minute' or '10/second'",
    "rate_limit_storage": "'memory' or a Redis URL such as redis://redis:6379/0",
    "log_level": "one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "log_format": "'json' or 'text'",
    "debug": "a boolean (1/0, true/false, yes/no, on/off)",
    "search_embeddings": "a boolean (1/0, true/false, yes/no, on/off)",
    "call_lane": "'on', 'all' or 'off'",
    "default_timeout_ms": "a positive integer (milliseconds)",
    "connect_timeout": "a positive number (seconds)",
    "ping_interval": "a positive number (seconds)",
    "ping_timeout": "a positive number (seconds)",
    "session_ttl": "a positive number (seconds)",
    "isolation": "'agent', 'session' or 'shared'",
    "idle_timeout": "a positive number (seconds)",
    "max_instances": "a positive integer",
    "shutdown_grace": "a positive integer (seconds)",
    "header_timeout": "a positive number (seconds)",
    "body_timeout": "a positive number (seconds)",
    "max_connections": "a positive integer",
    "workers": "an integer from 1 to 64",
    "max_sessions_per_agent": "a positive integer",
    "max_subscriptions": "a positive integer",
    "audit_log": "a file path",
    "audit_max_bytes": "a positive integer (bytes)",
    "audit_backups": "an integer of 0 or more",
    "default_agent": f"an agent id matching {AGENT_ID_PATTERN}",
    "agent": f"an agent id matching {AGENT_ID_PATTERN}",
    "auth": "'none' (serve without credentials on a non-loopback bind) or unset",
    "public_url": "the gateway's external base URL, e.g. https://gateway.example",
    "jwt_max_lifetime": "a positive number (seconds)",
    "mcp_config": "a file path",
    "rules": "a file path",
    "request_state_keys": "comma-separated secrets of at least 32 characters each",
    "input_wait": "a positive number (seconds)",
    "max_held_calls": "a positive integer",
    "otel_endpoint": "an OTLP/HTTP collector URL such as http://collector:4318",
    "otel_service_name": "a service name",
}


def _fernet_key(value: SecretStr) -> SecretStr:
    from cryptography.fernet import Fernet

    try:
        Fernet(value.get_secret_value().encode())
    except (ValueError, TypeError):
        raise ValueError("not a Fernet key") from None
    return value


class Settings(BaseSettings):
    """The gateway's process-level settings (the two config files hold servers and rules)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True
    )

    transport: Annotated[Literal["stdio", "http"], BeforeValidator(_lower)] = "stdio"
    http_host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"
    http_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    cors_origins: Origins = Field(default_factory=list)
    allowed_origins: Origins = Field(default_factory=list)
    # When set, /metrics answers only requests bearing it (it names every agent and server).
    metrics_token: Annotated[SecretStr, Field(min_length=16)] | None = None
    # Encrypts the refresh tokens `auth login` stores (Fernet); without it there is no login.
    credentials_key: Annotated[SecretStr, AfterValidator(_fernet_key)] | None = None
    # The Host names of this gateway; others get 403 (default: loopback names on a loopback bind).
    allowed_hosts: CommaList = Field(default_factory=list)
    max_body_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BODY
    rate_limit: Annotated[str, AfterValidator(_rate_limit)] = "600/minute"
    # Where the per-agent counters live: this process, or a Redis that gateway replicas share.
    rate_limit_storage: Annotated[
        str, AfterValidator(_rate_limit_storage), PlainSerializer(without_password)
    ] = "memory"
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = "INFO"
    log_format: Annotated[Literal["json", "text"], BeforeValidator(_lower)] = "json"
    debug: bool = False
    # search_tools fuses BM25 with sentence embeddings when the optional model is installed;
    # off: lexical only, and the model (about 300 MB of memory with PyTorch) is never loaded.
    search_embeddings: bool = True
    # HTTP tool calls that need nothing of the SDK's session take the call lane (server/lane.py):
    # "on" all but the calls of sessions whose streams are resumable (2025-11-25), "all" those
    # too (a dropped call is then not resumed), "off" none.
    call_lane: Annotated[Literal["on", "all", "off"], BeforeValidator(_lower)] = "on"
    default_timeout_ms: Annotated[int, Field(gt=0)] = 60_000
    connect_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 15.0
    ping_interval: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    ping_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    session_ttl: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3600.0
    # Defaults for servers that do not set their own (`.mcp.json`): whose downstream session a
    # call uses (one per agent, per client session, or one shared), how long an instance may sit
    # unused before it is closed, and how many instances one server may run at once.
    isolation: Annotated[Literal["agent", "session", "shared"], BeforeValidator(_lower)] = "agent"
    idle_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 600.0
    max_instances: Annotated[int, Field(gt=0)] = 32
    shutdown_grace: Annotated[int, Field(gt=0)] = 30
    # Seconds to send a request's headers; also how long a keep-alive connection may sit idle.
    header_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    body_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0
    # Above what the SDK's 10,000-session cap can hold open (one GET stream per session), so
    # standing streams cannot lock out other requests; Granian's default is 1,024.
    max_connections: Annotated[int, Field(gt=0)] = 12_000
    # Granian worker processes. Session-era sessions live in one worker's memory: more than one
    # serves 2026-07-28 traffic only reliably (see run/workers.py).
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Open sessions one agent may hold (rules: agents.<id>.max_sessions); the SDK holds 10,000.
    max_sessions_per_agent: Annotated[int, Field(gt=0)] = 1_000
    # Resources one agent may be subscribed to on one server (aggregate view).
    max_subscriptions: Annotated[int, Field(gt=0)] = 100
    # SSE events kept in this process for clients that resume a stream with Last-Event-ID.
    event_store_events: Annotated[int, Field(gt=0)] = 2_000
    audit_log: Path | None = None
    audit_max_bytes: Annotated[int, Field(gt=0)] = 10 * 2**20
    audit_backups: Annotated[int, Field(ge=0)] = 5
    default_agent: AgentId | None = None
    agent: AgentId | None = None
    auth: Annotated[Literal["none"] | None, BeforeValidator(_lower)] = None
    public_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    # The longest-lived JWT accepted (exp - iat, and exp - now): a leaked token expires.
    jwt_max_lifetime: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 86_400.0
    # Seal a 2026-07-28 retry's requestState (the first seals, all open: rotation); replicas
    # that share them accept each other's state. Unset: a key of this process's own.
    request_state_keys: Annotated[
        list[Annotated[SecretStr, Field(min_length=32)]], NoDecode, BeforeValidator(_comma_list)
    ] = Field(default_factory=list)
    # How long a call whose server asked its 2026-07-28 client something waits for the retry,
    # and how many such calls the process holds at once.
    input_wait: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 300.0
    max_held_calls: Annotated[int, Field(gt=0)] = 1_000
    mcp_config: Path | None = None
    rules: Path | None = None
    # Traces are exported over OTLP/HTTP only when a collector is named (see tracing.py).
    otel_endpoint: Annotated[
        str | None,
        Field(validation_alias=OTEL_ENV["otel_endpoint"], pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$"),
    ] = None
    otel_service_name: Annotated[
        str, Field(validation_alias=OTEL_ENV["otel_service_name"], min_length=1, max_length=200)
    ] = "agent-mcp-gateway"

    @property
    def loopback_bind(self) -> bool:
        return is_loopback_host(self.http_host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings from `environ` (default: the process environment); empty values are unset."""
    try:
        if environ is None:
            return Settings()
        values: dict[str, Any] = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if value
            and key.upper().startswith(ENV_PREFIX)
            and key[len(ENV_PREFIX) :].lower() in Settings.model_fields
        }
        values.update({name: environ[name] for name in OTEL_ENV.values() if environ.get(name)})
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def env_name(field: str) -> str:
    """The environment variable a settings field is read from."""
    return OTEL_ENV.get(field) or f"{ENV_PREFIX}{field.upper()}"


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = str(error["loc"][0]) if error["loc"] else "?"
    field = next((name for name, variable in OTEL_ENV.items() if variable == loc), loc)
    value = error.get("input")
    shown = value if isinstance(value, str) else ", ".join(value) if isinstance(value, list) else value
    if field == "rate_limit_storage" and isinstance(shown, str):
        shown = without_password(shown)
    if field in ("metrics_token", "request_state_keys", "credentials_key"):
        shown = "***"
    return f"{env_name(field)}={shown!r} is not valid: expected {EXPECTED.get(field, error['msg'])}"
