"""Gateway process: read settings, serve the app until SIGTERM, then drain and stop."""

from __future__ import annotations

import ctypes
import logging

import uvloop

from aias.core.logging import configure_logging
from aias.core.process import wait_for_termination, write_ready_file
from aias.core.settings import SettingsError
from aias.core.tracing import configure_tracing
from gateway.server import serving
from gateway.settings import GatewaySettings, load_settings

log = logging.getLogger(__name__)

# glibc's mallopt parameter and its own default value for it.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _return_large_buffers_to_the_os() -> None:
    """Pins glibc's mmap threshold, so each freed request body goes back to the OS.

    glibc raises the threshold to the size of the largest block freed so far, after which
    bodies of megabytes come from its heap and stay there: 50 concurrent 8 MB webhooks left
    a gateway at 486 MiB. Setting the threshold stops that; other C libraries are left alone.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


async def serve(settings: GatewaySettings) -> None:
    """Listens on host:port (0: any free port), reports the bound port, stops on SIGTERM."""
    async with serving(settings) as port:
        log.info("serving", extra={"host": settings.host, "port": port})
        write_ready_file(settings.ready_file, port=port)
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
    _return_large_buffers_to_the_os()
    try:
        # uvloop: aiohttp's parsing and socket work take noticeably less CPU on it.
        uvloop.run(serve(settings))
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # sends the spans still buffered


if __name__ == "__main__":
    main()
