"""The embedded PostgreSQL server keeps its port across a stop and a start."""

from __future__ import annotations

import socket
import struct
import tempfile
from pathlib import Path

from aias.core.embedded_pg import EmbeddedPostgres


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _connection_the_server_ends(port: int) -> None:
    """The server closes first (as it does after a client's Terminate message, which a running
    suite's sessions send when they stop), so the TIME_WAIT that follows is on its port."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(struct.pack("!ii", 8, 0x00010000))  # protocol 1.0, which it refuses
        while client.recv(4096):
            pass


def test_restart_right_after_a_stop_gets_the_same_port() -> None:
    # Outside pytest's 0700 temporary tree, which PostgreSQL's system account cannot enter.
    with tempfile.TemporaryDirectory(prefix="aias-pg-port-") as tmp:
        port = _unused_port()
        server = EmbeddedPostgres(Path(tmp), port)
        server.start()
        _connection_the_server_ends(port)
        server.stop()
        try:
            assert server.start().endswith(f"@127.0.0.1:{port}/postgres")
        finally:
            server.stop()
