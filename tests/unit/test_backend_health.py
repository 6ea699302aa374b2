"""The gateway learns each backend's health state and version from one health check."""

from __future__ import annotations

import socket

from aias.core.grpc_server import build_grpc_server
from aias.core.version import package_version
from aias.gateway.backends import BackendHealth, Backends
from tests.conftest import INTERNAL_TOKEN, server_settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_backend_reports_its_version_with_its_health() -> None:
    built = build_grpc_server(server_settings("tenancy", grace_seconds=0.0), [])
    await built.start()
    backends = Backends(
        {"tenancy": f"127.0.0.1:{built.port}", "billing": f"127.0.0.1:{_closed_port()}"},
        INTERNAL_TOKEN,
    )
    try:
        checked = await backends.check(2.0)
        states = await backends.health(2.0)
    finally:
        await backends.close()
        await built.stop(0)

    assert package_version() not in ("", "unknown")
    assert checked == {
        "tenancy": BackendHealth("SERVING", package_version()),
        "billing": BackendHealth("UNAVAILABLE", ""),
    }
    assert states == {"tenancy": "SERVING", "billing": "UNAVAILABLE"}
