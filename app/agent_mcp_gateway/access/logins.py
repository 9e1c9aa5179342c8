"""Stored logins: the refresh tokens `agent-mcp-gateway auth login` obtains with a person's
consent, per downstream server and agent ("*" for the gateway's own), encrypted at rest.

The file (`downstream-logins.json`, beside the tool pins) holds, per login, what the gateway
needs to use it (the authorization server's issuer and token endpoint, the client id, the
resource, the scope) in clear, and the refresh token as a Fernet token made with
`GATEWAY_CREDENTIALS_KEY`: whoever reads the file without the key learns who logged in where,
not a credential. It is written atomically, mode 0600, and re-read on every use, so a login made
by the CLI reaches a running gateway without a restart; a rotated refresh token is written back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from agent_mcp_gateway.access.pins import pins_path
from agent_mcp_gateway.settings import Settings

LOGINS_NAME = "downstream-logins.json"
GATEWAY = "*"  # the login of the gateway itself, used by agents without one of their own


class LoginStoreError(Exception):
    """The file cannot be used: unreadable, malformed, or encrypted with another key."""


@dataclass(frozen=True)
class Login:
    server: str
    agent: str
    issuer: str
    token_endpoint: str
    revocation_endpoint: str | None
    client_id: str
    resource: str
    scope: str | None
    stored_at: float


def logins_path(settings: Settings) -> Path:
    return pins_path(settings).with_name(LOGINS_NAME)


class LoginStore:
    def __init__(self, path: Path, key: SecretStr) -> None:
        self.path = path
        self._fernet = Fernet(key.get_secret_value().encode())

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LoginStoreError(f"{self.path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("logins"), dict):
            raise LoginStoreError(f"{self.path} is not a logins file")
        return dict(data["logins"])

    def _write(self, logins: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".logins-")
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump({"logins": logins}, out, indent=2, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def all(self) -> list[Login]:
        """Every login, without its refresh token."""
        return [_login(entry) for entry in self._read().values()]

    def find(self, server: str, agent: str) -> tuple[Login, str] | None:
        """The login of `agent` for `server` (else the gateway's) and its refresh token."""
        logins = self._read()
        entry = logins.get(_key(server, agent)) or logins.get(_key(server, GATEWAY))
        if entry is None:
            return None
        try:
            refresh = self._fernet.decrypt(entry["refresh_token"].encode()).decode()
        except (InvalidToken, KeyError, AttributeError):
            raise LoginStoreError(
                f"the login of {entry.get('agent')!r} for {server!r} cannot be decrypted with "
                "GATEWAY_CREDENTIALS_KEY (another key, or a damaged file)"
            ) from None
        return _login(entry), refresh

    def save(self, login: Login, refresh_token: str) -> None:
        logins = self._read()
        entry = asdict(login) | {"refresh_token": self._fernet.encrypt(refresh_token.encode()).decode()}
        logins[_key(login.server, login.agent)] = entry
        self._write(logins)

    def rotate(self, login: Login, refresh_token: str) -> None:
        """A refresh answered with a new refresh token: keep it (the old one is spent)."""
        self.save(login, refresh_token)

    def remove(self, server: str, agent: str) -> Login | None:
        logins = self._read()
        entry = logins.pop(_key(server, agent), None)
        if entry is None:
            return None
        self._write(logins)
        return _login(entry)


def _key(server: str, agent: str) -> str:
    return f"{server}/{agent}"


def _login(entry: dict[str, Any]) -> Login:
    fields: dict[str, Any] = {name: entry.get(name) for name in Login.__dataclass_fields__}
    fields["stored_at"] = float(fields["stored_at"] or time.time())
    return Login(**fields)
