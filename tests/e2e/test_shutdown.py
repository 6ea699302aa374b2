"""SIGTERM: a service goes NOT_SERVING, finishes, and exits cleanly; the launcher leaves no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aias.core.localdb import LocalDatabase
from tests.conftest import INTERNAL_TOKEN


def _start_tenancy(database: LocalDatabase, ready: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_TENANCY_PORT": "0",
        "AIAS_TENANCY_METRICS_PORT": "0",
        "AIAS_APP_DATABASE_URL": database.app_url,
        "AIAS_READY_FILE": str(ready),
        "AIAS_SHUTDOWN_GRACE_SECONDS": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "aias.services.tenancy.main"], env=env, stderr=subprocess.PIPE
    )


def test_sigterm_turns_health_not_serving_and_exits_zero(
    database: LocalDatabase, tmp_path: Path
) -> None:
    ready = tmp_path / "tenancy.ready"
    with _start_tenancy(database, ready) as process:
        _watch_shutdown(process, ready)
        assert process.stderr is not None
        output = process.stderr.read().decode(errors="replace")
    lines = output.splitlines()
    # Every line the process writes is a JSON log line: a traceback would be a stray line.
    assert all(line.startswith("{") for line in lines), output
    messages = [json.loads(line)["message"] for line in lines]
    assert messages[-2:] == ["shutting down", "stopped"]


def _watch_shutdown(process: subprocess.Popen[bytes], ready: Path) -> None:
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
