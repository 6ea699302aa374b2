"""What every long-running process does at its edges: say it is ready, wait to be stopped, and
keep the C heap from holding large buffers.

Kept apart from the gRPC server so a process without one (the gateway) imports only this.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# A buffer this large or larger gets a mapping of its own, unmapped when it is freed: a webhook
# body of megabytes goes back to the OS at once. Smaller ones (download and upload messages)
# come from the heap and are reused. Pinned at 128 KiB (glibc's starting value), each 256 KiB
# download message was a fresh mapping: 64 page faults and as many zeroed pages per message,
# about half the CPU the gateway and the artifacts service spent per downloaded byte.
_MMAP_THRESHOLD_BYTES = 1024 * 1024
# Free memory the heap keeps at its top rather than give back at once (glibc: 128 KiB).
_TRIM_THRESHOLD_BYTES = 2 * 1024 * 1024
# After a transfer of at least this much, the heap's free pages go back to the OS...
_TRIM_AFTER_BYTES = 1024 * 1024
# ...this long after it (at most one trim per this interval, and always one after the last).
_TRIM_DELAY_SECONDS = 1.0
# A process frees much of what its start-up allocated in the seconds after it is ready (first
# connections, first calls); one trim this long after gave 1.0-1.3 MiB of idle RSS back.
_SETTLED_SECONDS = 5.0


@dataclass(frozen=True)
class HeapThresholds:
    """glibc's mmap and trim thresholds for a process (see `return_large_buffers_to_the_os`)."""

    mmap_bytes: int = _MMAP_THRESHOLD_BYTES
    trim_bytes: int = _TRIM_THRESHOLD_BYTES


DEFAULT_HEAP = HeapThresholds()


def _libc_function(name: str) -> Any:
    return getattr(ctypes.CDLL(None), name, None)


def return_large_buffers_to_the_os(thresholds: HeapThresholds = DEFAULT_HEAP) -> None:
    """Pins glibc's mmap and trim thresholds, so each freed large buffer goes back to the OS.

    glibc raises the mmap threshold to the size of the largest block freed so far, after which
    buffers of megabytes come from its heap and stay there: 50 concurrent 8 MB webhooks left
    a gateway at 486 MiB, and a 200 MiB artifact in 1 MiB chunks left the artifacts service
    5-7 MiB higher. Pinning the threshold stops that; other C libraries are left alone.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, thresholds.mmap_bytes)
        mallopt(_M_TRIM_THRESHOLD, thresholds.trim_bytes)


def freeze_survivors() -> None:
    """Moves every object start-up made and still holds to the collector's permanent
    generation, so no later collection walks them again.

    After its imports alone a process holds 57,000 (the gateway) to 91,000 (execution) objects
    the collector tracks, and a full collection of them took 24-58 ms on a 2-core machine: a
    pause every request waiting on the event loop sat through. After this one, full
    collections walk only what the process made since (at 500 webhooks/s offered, p99 295 ->
    159, 186 -> 131 and 286 -> 181 ms in three alternating comparisons).
    """
    gc.collect()
    gc.freeze()


class HeapTrim:
    """Gives the heap's free pages back to the OS after large transfers, and once start-up has
    settled (when it also freezes what start-up left: `freeze_survivors`).

    The messages of a download or upload are freed in the middle of the heap, below live
    objects, where only `malloc_trim` returns their pages; without it five 100 MiB round trips
    left the artifacts service about 12 MiB higher.
    """

    def __init__(
        self,
        trim: Callable[[int], object] | None = None,
        delay: float = _TRIM_DELAY_SECONDS,
        settled: float = _SETTLED_SECONDS,
        freeze: Callable[[], object] = freeze_survivors,
    ) -> None:
        self._trim = trim or _libc_function("malloc_trim")
        self._freeze = freeze
        self._delay = delay
        self._settled = settled
        self._due = 0.0

    def after_start(self) -> None:
        """Called on the event loop's thread once the process is ready."""
        asyncio.get_running_loop().call_later(self._settled, self._settle)

    def _settle(self) -> None:
        # The collection first: what it frees is neither frozen nor kept from the trim.
        self._freeze()
        if self._trim is not None:
            self._trim(0)

    def after_transfer(self, size: int) -> None:
        """Called on the event loop's thread when a transfer of `size` bytes has ended."""
        if size < _TRIM_AFTER_BYTES or self._trim is None:
            return
        now = time.monotonic()
        if now < self._due:
            return  # the trim already scheduled comes after this transfer's end
        self._due = now + self._delay
        asyncio.get_running_loop().call_later(self._delay, self._trim, 0)


heap = HeapTrim()


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
