"""The run command: brings every process up, and on SIGTERM leaves no process or PostgreSQL behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aias.core.launcher import PROCESSES


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_launcher_starts_everything_and_stops_without_orphans() -> None:
    # Outside pytest's 0700 temporary tree, which PostgreSQL's system account cannot enter.
    with tempfile.TemporaryDirectory(prefix="aias-launcher-") as tmp:
        data_dir = Path(tmp)
        env = {**os.environ, "AIAS_EMBEDDED_PG_PORT": "0", "AIAS_LOG_LEVEL": "WARNING"}
        for spec in PROCESSES:
            env[spec.port_env] = "0"
            if spec.metrics_env:
                env[spec.metrics_env] = "0"
        with subprocess.Popen(
            [sys.executable, "-m", "aias.core.launcher", "--data-dir", str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as launcher:
            assert launcher.stdout is not None
            banner = ""
            for line in launcher.stdout:
                banner += line
                if line.startswith("Press Ctrl-C"):
                    break
            assert "AIAS is up." in banner
            assert f"operator token: {(data_dir / 'admin-token').read_text().strip()}" in banner
            pids = [
                json.loads((data_dir / "run" / f"{spec.name}.ready").read_text())["pid"]
                for spec in PROCESSES
            ]
            postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
            assert all(_alive(pid) for pid in [*pids, postmaster])

            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(timeout=30) == 0
            assert "AIAS stopped." in launcher.stdout.read()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in [*pids, postmaster]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in [*pids, postmaster] if _alive(pid)] == []
