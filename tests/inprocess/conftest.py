"""The in-process tier's stdio fixture servers fork from one fork server per test process
(`FIXTURE_FORK_SERVER=off` starts each as its own interpreter instead, to compare)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import fork_server, forking_from


@pytest.fixture(scope="session")
def fork_socket() -> Iterator[Path]:
    # A short directory: a Unix socket's path may be at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="fork") as directory, fork_server(Path(directory)) as path:
        yield path


@pytest.fixture(scope="module", autouse=True)
def forked_fixture_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    if os.environ.get("FIXTURE_FORK_SERVER") == "off":
        yield
        return
    with forking_from(request.getfixturevalue("fork_socket")):
        yield
