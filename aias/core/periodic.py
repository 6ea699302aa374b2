"""A background task that runs one action every so often, for a process's sweepers and samplers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `action` every `interval_seconds` until stopped; a failed round is logged and the
    next one comes all the same (a database that is down now may answer later)."""

    def __init__(
        self,
        name: str,
        action: Callable[[], Awaitable[object]],
        interval_seconds: float,
        *,
        at_start: bool = True,
    ) -> None:
        self._name = name
        self._action = action
        self._interval = interval_seconds
        # Whether the first round runs at start-up or one interval later.
        self._at_start = at_start
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        if not self._at_start:
            await asyncio.sleep(self._interval)
        while True:
            try:
                await self._action()
            except Exception as error:
                log.warning(
                    f"{self._name} failed",
                    extra={"task": self._name, "error": type(error).__name__},
                    exc_info=True,
                )
            await asyncio.sleep(self._interval)
