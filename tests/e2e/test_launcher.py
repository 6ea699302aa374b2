"""The run command: brings every process up and leaves no process or PostgreSQL behind."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aias.core.launcher import PROCESSES


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
    """A running `aias-run` process, its data folder and its console."""

    process: subprocess.Popen[str]
    data_dir: Path
    banner: str
    stderr: Path

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
    data_dir = root / "data"
    env = {**os.environ, "AIAS_EMBEDDED_PG_PORT": "0", "AIAS_LOG_LEVEL": "WARNING"}
    for spec in PROCESSES:
        env[spec.port_env] = "0"
        if spec.metrics_env:
            env[spec.metrics_env] = "0"
    stderr = root / "launcher.log"
    with (
        stderr.open("ab") as console,
        subprocess.Popen(
            [sys.executable, "-m", "aias.core.launcher", "--data-dir", str(data_dir)],
            env={**env, **settings},
            stdout=subprocess.PIPE,
            stderr=console,
            text=True,
        ) as process,
    ):
        try:
            assert process.stdout is not None
            banner = ""
            for line in process.stdout:
                banner += line
                if line.startswith("Press Ctrl-C"):
                    break
            assert "AIAS is up." in banner, stderr.read_text()
            yield Launcher(process, data_dir, banner, stderr)
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
        assert f"operator token: {(run.data_dir / 'admin-token').read_text().strip()}" in run.banner
        pids = [*run.pids(), run.postmaster()[0]]
        assert all(_alive(pid) for pid in pids)

        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=30) == 0
        assert run.process.stdout is not None
        assert "AIAS stopped." in run.process.stdout.read()
        assert _wait_until(lambda: not any(_alive(pid) for pid in pids), 10)

        # A wave has finished stopping before the next one is told to, PostgreSQL last.
        at = _log_positions(run.stderr)
        waves = [
            ("gateway",),
            ("execution-worker", "execution", "billing"),
            ("artifacts", "tenancy"),
        ]
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
