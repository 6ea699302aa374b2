"""What every long-running process does at its edges: say it is ready, wait to be stopped.

Kept apart from the gRPC server so a process without one (the gateway) imports only this.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
from pathlib import Path
from typing import Any

# glibc's mallopt parameter and its own default value for it.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def return_large_buffers_to_the_os() -> None:
    """Pins glibc's mmap threshold, so each freed large buffer goes back to the OS.

    glibc raises the threshold to the size of the largest block freed so far, after which
    buffers of megabytes come from its heap and stay there: 50 concurrent 8 MB webhooks left
    a gateway at 486 MiB, and a 200 MiB artifact in 1 MiB chunks left the artifacts service
    5-7 MiB higher. Setting the threshold stops that; other C libraries are left alone.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


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
