"""Boots real gRPC servers in-process on port 0 with the production factories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aias.core.grpc_server import BuiltServer


@asynccontextmanager
async def running(built: BuiltServer) -> AsyncIterator[str]:
    """Starts a built server and yields its address; stops it (gracefully) afterwards."""
    await built.start()
    try:
        yield f"127.0.0.1:{built.port}"
    finally:
        await built.stop(1.0)
