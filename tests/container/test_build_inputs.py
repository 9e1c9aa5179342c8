"""ops/build-image.sh builds the gateway image only when its inputs changed.

The image carries the label agent-mcp-gateway.inputs, a SHA-256 over what it is built from
(Containerfile, the lock files, pyproject.toml, app/, the script, the base image); with the
same inputs a second run builds nothing, which spares `ops/stack.sh up` a rebuild each time.
"""

from __future__ import annotations

import os
import subprocess
import time

import docker
import pytest

from .conftest import ROOT, report


def test_an_unchanged_tree_is_not_rebuilt(engine: docker.DockerClient, gateway_image: str) -> None:
    if os.environ.get("GATEWAY_TEST_IMAGE"):
        pytest.skip("GATEWAY_TEST_IMAGE names an image built elsewhere")
    inputs = engine.images.get(gateway_image).labels.get("agent-mcp-gateway.inputs", "")
    assert len(inputs) == 64, engine.images.get(gateway_image).labels

    started = time.monotonic()
    again = subprocess.run(
        [str(ROOT / "ops" / "build-image.sh")],
        cwd=ROOT,
        env={**os.environ, "IMAGE": gateway_image},
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == gateway_image
    assert f"{gateway_image} is up to date" in again.stderr, again.stderr
    assert "podman build" not in again.stderr and "wheels" not in again.stderr, again.stderr
    assert engine.images.get(gateway_image).labels["agent-mcp-gateway.inputs"] == inputs
    report(f"ops/build-image.sh with unchanged inputs: {seconds:.1f} s, nothing built")
