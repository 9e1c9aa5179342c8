"""The demo of per-agent credentials (ops/demo_identities.py) runs as documented: one protected
downstream, two agents seen as two identities, an agent without credentials refused."""

from __future__ import annotations

import os
import subprocess

from conftest import PY, ROOT


def test_the_demo_shows_two_agents_as_two_identities() -> None:
    done = subprocess.run(
        [PY, str(ROOT / "ops" / "demo_identities.py")],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "researcher -> whoami: ada (researcher's account)" in done.stdout, lines
    assert "backend -> whoami: svc-backend (backend's account)" in done.stdout, lines
    assert "intern -> whoami: refused:" in done.stdout and "per-agent credentials" in done.stdout, lines
