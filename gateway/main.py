"""Gateway process: read settings, serve the app until SIGTERM, then drain and stop."""

from __future__ import annotations

import logging

import uvloop

from aias.core.logging import configure_logging
from aias.core.process import (
    heap,
    return_large_buffers_to_the_os,
    wait_for_termination,
    write_ready_file,
)
from aias.core.settings import SettingsError
from aias.core.tracing import configure_tracing
from aias.gateway.server import serving
from aias.gateway.settings import GatewaySettings, load_settings

log = logging.getLogger(__name__)


async def serve(settings: GatewaySettings) -> None:
    """Listens on host:port (0: any free port), reports the bound port, stops on SIGTERM."""
    async with serving(settings) as port:
        log.info("serving", extra={"host": settings.host, "port": port})
        write_ready_file(settings.ready_file, port=port)
        heap.after_start()
        await wait_for_termination()
        log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
    log.info("stopped")


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as error:
        raise SystemExit(str(error)) from None
    configure_logging("gateway", settings.log_level)
    # Before the app is built: it adds the tracing middleware only when a provider is installed.
    tracer_provider = configure_tracing("gateway", settings.tracing)
    return_large_buffers_to_the_os()
    try:
        # uvloop: aiohttp's parsing and socket work take noticeably less CPU on it.
        uvloop.run(serve(settings))
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # sends the spans still buffered


if __name__ == "__main__":
    main()
