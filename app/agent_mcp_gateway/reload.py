"""Hot reload: watch both configuration files, and reload on SIGHUP.

The directories are watched rather than the files, and a change is recognised by the files'
identity and content stamp (inode, size, mtime of what the path resolves to now), not by the
name in the event. That covers an editor's atomic rename, an in-place write, and Kubernetes'
ConfigMap mounts, where the file is a symlink through `..data`, itself a symlink swapped to a
new directory on every update (the event names `..data`, never the file).

The audit log often sits beside the configuration; its own writes (one per call) are not
changes to watch, so they are filtered out before they wake the watcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from watchfiles import Change, awatch

from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.metrics import CONFIG_RELOADS

log = logging.getLogger("agent_mcp_gateway")

Stamp = tuple[tuple[str, int, int, int] | None, ...]
RETRY_SECONDS = 1.0


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    stamps: list[tuple[str, int, int, int] | None] = []
    for path in paths:
        try:
            resolved = path.resolve()
            info = resolved.stat()
        except OSError:
            stamps.append(None)
            continue
        stamps.append((str(resolved), info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def _directories(paths: tuple[Path, ...]) -> set[Path]:
    """The folders whose changes can change what the paths read: where each path is, and where
    it resolves to (through any symlinks)."""
    found = set()
    for path in paths:
        absolute = Path(os.path.abspath(path))
        found.add(absolute.parent)
        found.add(absolute.resolve().parent)
    return {directory for directory in found if directory.is_dir()}


async def watch_config(gateway: Gateway, stop: asyncio.Event) -> None:
    """Reload whenever either file changes, until `stop`; an unexpected failure is logged,
    counted and followed by a fresh watch, never the end of watching."""
    while not stop.is_set():
        try:
            await _watch(gateway, stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            CONFIG_RELOADS.labels("failure").inc()
            log.exception("configuration watcher failed; watching again")
            await asyncio.sleep(RETRY_SECONDS)


class _NotAudit:
    """A watch filter that drops changes to the audit logs and their rotated files."""

    def __init__(self, audit_path: Path) -> None:
        self.path = os.path.abspath(audit_path)

    def __call__(self, change: Change, path: str) -> bool:
        # The file itself, its rotations (.1, .2, ...) and the refusal log beside it (.refusals*).
        return path != self.path and not path.startswith(self.path + ".")


async def _watch(gateway: Gateway, stop: asyncio.Event) -> None:
    paths = gateway.config_paths
    directories = await asyncio.to_thread(_directories, paths)
    last = await asyncio.to_thread(_stamp, paths)
    not_audit = _NotAudit(gateway.audit.path)
    async for _ in awatch(*directories, watch_filter=not_audit, stop_event=stop, debounce=100, step=50):
        now = await asyncio.to_thread(_stamp, paths)
        if now != last:
            last = now
            await gateway.reload("file-change")
        if await asyncio.to_thread(_directories, gateway.config_paths) != directories:
            return  # a symlink now points elsewhere: watch the new folders


def install_sighup(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: gateway.spawn(gateway.reload("SIGHUP")))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no signals
        log.debug("SIGHUP reload unavailable in this process")
