"""The run command: restarts what dies, stops in order, and leaves no process or PostgreSQL behind."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aias.core.launcher import PROCESSES, WAVES
from tests.e2e.client import ORDER, new_endpoint, new_tenant, wait_for_run
from tests.e2e.conftest import ADMIN_TOKEN


def _alive(pid: int) -> bool:
    """Running, not merely waiting to be reaped (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Launcher:
    """A running `aias-run` process, its data folder, and files holding what it printed (stdout)
    and logged (stderr, where its processes log too)."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    stdout: Path
    stderr: Path

    def printed(self) -> str:
        return self.stdout.read_text()

    def ready(self, name: str) -> dict[str, int]:
        info: dict[str, int] = json.loads((self.data_dir / "run" / f"{name}.ready").read_text())
        return info

    def pids(self) -> list[int]:
        return [self.ready(spec.name)["pid"] for spec in PROCESSES]

    def postmaster(self) -> tuple[int, int]:
        """The embedded PostgreSQL server's pid and port."""
        lines = (self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])


@contextmanager
def _launcher(root: Path, **settings: str) -> Iterator[Launcher]:
    """Starts the launcher as `make run` does, every process on a free port, and waits for it."""
    env = {**os.environ, "AIAS_EMBEDDED_PG_PORT": "0", "AIAS_LOG_LEVEL": "WARNING"}
    for spec in PROCESSES:
        env[spec.port_env] = "0"
        if spec.metrics_env:
            env[spec.metrics_env] = "0"
    stdout, stderr = root / "console.txt", root / "launcher.log"
    # Fresh files for each launcher, appended to so that the processes sharing them never
    # write over each other's lines.
    for output in (stdout, stderr):
        output.unlink(missing_ok=True)
    with (
        stdout.open("ab") as printed,
        stderr.open("ab") as logged,
        subprocess.Popen(
            [sys.executable, "-m", "aias.core.launcher", "--data-dir", str(root / "data")],
            env={**env, **settings},
            stdout=printed,
            stderr=logged,
        ) as process,
    ):
        run = Launcher(process, root / "data", stdout, stderr)
        try:
            _wait_until(lambda: "Press Ctrl-C" in run.printed() or process.poll() is not None, 90)
            assert "AIAS is up." in run.printed(), stderr.read_text()
            yield run
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


def _log_positions(path: Path) -> dict[tuple[str, str], int]:
    """Where each process first logged each message, in the launcher's console (to which every
    process writes, so positions order the events)."""
    positions: dict[tuple[str, str], int] = {}
    for number, line in enumerate(path.read_text().splitlines()):
        if line.startswith("{"):
            entry = json.loads(line)
            positions.setdefault((entry["service"], entry["message"]), number)
    return positions


def test_launcher_starts_everything_and_stops_in_order_without_orphans() -> None:
    # Outside pytest's 0700 temporary tree, which PostgreSQL's system account cannot enter.
    with (
        tempfile.TemporaryDirectory(prefix="aias-launcher-") as tmp,
        _launcher(Path(tmp), AIAS_LOG_LEVEL="INFO") as run,
    ):
        assert f"operator token: in {run.data_dir / 'admin-token'}\n" in run.printed()
        assert (run.data_dir / "admin-token").read_text().strip() not in run.printed()
        pids = [*run.pids(), run.postmaster()[0]]
        assert all(_alive(pid) for pid in pids)

        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=30) == 0
        assert "AIAS stopped." in run.printed()
        assert _wait_until(lambda: not any(_alive(pid) for pid in pids), 10)

        # A wave has finished stopping before the next one is told to, PostgreSQL last.
        at = _log_positions(run.stderr)
        waves = [tuple(reversed(wave)) for wave in reversed(WAVES)]
        for earlier, later in itertools.pairwise(waves):
            assert max(at[name, "stopped"] for name in earlier) < min(
                at[name, "shutting down"] for name in later
            )
        assert (
            max(at[name, "stopped"] for name in waves[-1])
            < at["launcher", "embedded PostgreSQL stopped"]
        )


def test_killed_launcher_takes_postgresql_with_it_and_a_restart_gets_its_port() -> None:
    with tempfile.TemporaryDirectory(prefix="aias-launcher-") as tmp:
        pg_port = str(_unused_port())
        with _launcher(Path(tmp), AIAS_EMBEDDED_PG_PORT=pg_port) as run:
            postmaster, port = run.postmaster()
            assert port == int(pg_port)
            pids = [*run.pids(), postmaster]
            run.process.kill()
            assert _wait_until(lambda: not any(_alive(pid) for pid in pids), 10), [
                pid for pid in pids if _alive(pid)
            ]
        # The next start on the same folder gets a fresh server on the configured port.
        with _launcher(Path(tmp), AIAS_EMBEDDED_PG_PORT=pg_port) as run:
            assert run.postmaster()[1] == int(pg_port)
            run.process.send_signal(signal.SIGTERM)
            assert run.process.wait(timeout=30) == 0


def _restarted(run: Launcher, name: str, old_pid: int) -> bool:
    """Whether the process is ready again under a new pid (its ready file is gone meanwhile)."""
    try:
        return run.ready(name)["pid"] != old_pid
    except FileNotFoundError:
        return False


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _readyz(gateway: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_launcher_restarts_killed_processes_on_their_ports() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="aias-launcher-") as tmp,
        # A short lease: the killed worker's runs are taken over within the test.
        _launcher(Path(tmp), AIAS_ADMIN_TOKEN=ADMIN_TOKEN, AIAS_WORKER_LEASE_SECONDS="3") as run,
    ):
        assert "operator token: the AIAS_ADMIN_TOKEN you set\n" in run.printed()
        assert ADMIN_TOKEN not in run.printed()
        gateway = run.ready("gateway")["port"]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{gateway}") as http:
            tenant = await new_tenant(http, "enterprise")
            _endpoint, secret = await new_endpoint(http, tenant)
            accepted: list[str] = []
            loading = asyncio.Event()

            async def load() -> None:
                """Webhooks while processes die: refusals are fine, a 202 must become a run."""
                while not loading.is_set():
                    async with http.post(
                        f"/api/webhooks/{tenant.id}/{secret}", json=ORDER
                    ) as response:
                        if response.status == 202:
                            accepted.append((await response.json())["run_id"])
                    await asyncio.sleep(0.01)

            loader = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            before = {name: run.ready(name) for name in ("execution-worker", "execution")}
            for info in before.values():
                os.kill(info["pid"], signal.SIGKILL)
            for name, old in before.items():
                assert _wait_until(functools.partial(_restarted, run, name, old["pid"]), 30)
                new = run.ready(name)
                assert (new["port"], new["metrics_port"]) == (old["port"], old["metrics_port"])
                assert _serving(new["port"])
            # Dying again soon after a restart doubles the back-off.
            again = run.ready("execution-worker")["pid"]
            os.kill(again, signal.SIGKILL)
            assert _wait_until(functools.partial(_restarted, run, "execution-worker", again), 30)
            assert _wait_until(lambda: _readyz(gateway) == 200, 30)
            await asyncio.sleep(0.5)  # the restarted processes take load too
            loading.set()
            await loader

            # Every 202 is one run, and every one of them ends, despite the kills.
            assert len(accepted) == len(set(accepted)) > 0
            for run_id in accepted:
                assert (await wait_for_run(http, tenant, run_id))["status"] == "succeeded"

        # The console says what happened in words, the log as JSON.
        worker_port = before["execution-worker"]["port"]
        said = [
            f"execution-worker was killed by SIGKILL; restarting it in 0.5s on port {worker_port}",
            f"execution-worker was killed by SIGKILL; restarting it in 1s on port {worker_port}",
            *(
                f"{name} is back (pid {run.ready(name)['pid']}, port {old['port']})"
                for name, old in before.items()
            ),
            f"execution was killed by SIGKILL; restarting it in 0.5s on port "
            f"{before['execution']['port']}",
        ]
        assert _wait_until(lambda: all(line in run.printed() for line in said), 10), run.printed()
        logged = [
            json.loads(line) for line in run.stderr.read_text().splitlines() if line[:1] == "{"
        ]
        exits = [
            (line["process_name"], line["exit_code"])
            for line in logged
            if line["message"] == "process exited unexpectedly"
        ]
        assert sorted(exits) == [
            ("execution", -9),
            ("execution-worker", -9),
            ("execution-worker", -9),
        ]
