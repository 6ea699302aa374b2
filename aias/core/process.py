"""What every long-running process does at its edges: say it is ready, wait to be stopped.

Kept apart from the gRPC server so a process without one (the gateway) imports only this.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any


def write_ready_file(path: Path | None, **fields: Any) -> None:
    """Atomically tells a launcher where this process listens, once it is ready."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields}))
    tmp.replace(path)


async def wait_for_termination() -> None:
    """Returns on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
