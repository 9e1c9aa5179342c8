"""Stored logins: refresh tokens encrypted at rest, the file private, another key refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from agent_mcp_gateway.access.logins import GATEWAY, Login, LoginStore, LoginStoreError
from agent_mcp_gateway.settings import SettingsError, load_settings


def login(agent: str) -> Login:
    return Login(
        "remote",
        agent,
        "https://as.test",
        "https://as.test/token",
        None,
        "console",
        "https://rs.test/mcp",
        "mcp",
        1.0,
    )


def store(path: Path, key: str | None = None) -> LoginStore:
    return LoginStore(path, SecretStr(key or Fernet.generate_key().decode()))


def test_refresh_tokens_are_encrypted_at_rest_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "downstream-logins.json"
    key = Fernet.generate_key().decode()
    logins = store(path, key)
    logins.save(login("alpha"), "refresh-token-of-alpha")
    logins.save(login(GATEWAY), "refresh-token-of-the-gateway")
    assert "refresh-token-of" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = store(path, key)
    assert again.find("remote", "alpha") == (login("alpha"), "refresh-token-of-alpha")
    # An agent without a login of its own uses the gateway's.
    assert again.find("remote", "beta") == (login(GATEWAY), "refresh-token-of-the-gateway")
    assert {entry.agent for entry in again.all()} == {"alpha", GATEWAY}
    assert again.remove("remote", "alpha") == login("alpha")
    assert again.find("remote", "alpha") == (login(GATEWAY), "refresh-token-of-the-gateway")


def test_another_key_cannot_read_a_login_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "downstream-logins.json"
    store(path).save(login("alpha"), "refresh-token")
    with pytest.raises(LoginStoreError, match="cannot be decrypted with GATEWAY_CREDENTIALS_KEY"):
        store(path).find("remote", "alpha")


def test_the_credentials_key_must_be_a_fernet_key_and_is_never_shown() -> None:
    key = Fernet.generate_key().decode()
    assert load_settings({"GATEWAY_CREDENTIALS_KEY": key}).credentials_key == SecretStr(key)
    with pytest.raises(SettingsError) as caught:
        load_settings({"GATEWAY_CREDENTIALS_KEY": "not-a-key-but-a-secret"})
    assert "GATEWAY_CREDENTIALS_KEY" in str(caught.value) and "Fernet" in str(caught.value)
    assert "not-a-key-but-a-secret" not in str(caught.value)
