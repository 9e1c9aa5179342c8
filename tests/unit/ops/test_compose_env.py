"""ops/compose-env.sh: the compose stack's token hashes and the request-state key its replicas
share, made once and kept, the key added to a file made before it was."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from agent_mcp_gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
KEY = "GATEWAY_REQUEST_STATE_KEYS"


def compose_env(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the script beside an empty compose folder, as it sits in ops/."""
    script = tmp_path / "compose-env.sh"
    shutil.copy(ROOT / "ops/compose-env.sh", script)
    (tmp_path / "compose").mkdir()
    return script, tmp_path / "compose" / "gateway.env"


def run(script: Path) -> None:
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def variables(env_file: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines())


def test_the_key_is_made_once_and_kept_and_the_gateway_accepts_it(tmp_path: Path) -> None:
    script, gateway_env = compose_env(tmp_path)
    run(script)
    made = variables(gateway_env)
    assert set(made) == {"RESEARCHER_TOKEN_SHA256", "BACKEND_TOKEN_SHA256", KEY}
    keys = load_settings({KEY: made[KEY]}).request_state_keys
    assert [key.get_secret_value() for key in keys] == [made[KEY]]
    assert gateway_env.stat().st_mode & 0o077 == 0
    run(script)
    assert variables(gateway_env) == made


def test_a_file_made_before_the_key_gets_one_and_keeps_its_hashes(tmp_path: Path) -> None:
    script, gateway_env = compose_env(tmp_path)
    run(script)
    hashes = {name: value for name, value in variables(gateway_env).items() if name != KEY}
    gateway_env.write_text("".join(f"{name}={value}\n" for name, value in hashes.items()))
    run(script)
    again = variables(gateway_env)
    assert {name: value for name, value in again.items() if name != KEY} == hashes
    assert len(again[KEY]) >= 32
