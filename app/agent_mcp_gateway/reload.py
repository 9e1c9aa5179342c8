"""Hot reload: watch both configuration files, and reload on SIGHUP.

The parent directories are watched rather than the files, so an editor's save by atomic
rename (write a temp file, rename over the original) is seen like an in-place write.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from watchfiles import awatch

from .gateway import Gateway

log = logging.getLogger("agent_mcp_gateway")


async def watch_config(gateway: Gateway, stop: asyncio.Event) -> None:
    def targets() -> set[Path]:
        return {path.resolve() for path in gateway.config_paths}

    directories = {path.parent for path in targets()}
    async for changes in awatch(*directories, stop_event=stop, debounce=100, step=50):
        wanted = targets()
        if any(Path(changed).resolve() in wanted for _, changed in changes):
            await gateway.reload("file-change")


def install_sighup(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(gateway.reload("SIGHUP")))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no signals
        log.debug("SIGHUP reload unavailable in this process")
