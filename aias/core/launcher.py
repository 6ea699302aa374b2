"""Runs the whole suite locally: database, migrations, every service as its own OS process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aias.core.localdb import LocalDatabase, kept_secret, prepare
from aias.core.settings import Env

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSpec:
    """One process kind: how to start it and which settings name its port."""

    name: str
    module: str
    port_env: str
    metrics_env: str | None
    default_port: int
    default_metrics: int
    needs: tuple[str, ...] = ()


# Started in this order, one wave at a time, so each process gets its backends' real ports.
PROCESSES = (
    ProcessSpec(
        "tenancy",
        "aias.services.tenancy.main",
        "AIAS_TENANCY_PORT",
        "AIAS_TENANCY_METRICS_PORT",
        50051,
        9101,
    ),
    ProcessSpec(
        "artifacts",
        "aias.services.artifacts.main",
        "AIAS_ARTIFACTS_PORT",
        "AIAS_ARTIFACTS_METRICS_PORT",
        50053,
        9103,
        needs=("tenancy", "execution"),
    ),
    ProcessSpec(
        "billing",
        "aias.services.billing.main",
        "AIAS_BILLING_PORT",
        "AIAS_BILLING_METRICS_PORT",
        50054,
        9104,
        needs=("tenancy", "execution"),
    ),
    ProcessSpec(
        "execution",
        "aias.services.execution.main",
        "AIAS_EXECUTION_PORT",
        "AIAS_EXECUTION_METRICS_PORT",
        50052,
        9102,
        needs=("tenancy",),
    ),
    ProcessSpec(
        "execution-worker",
        "aias.services.execution.worker_main",
        "AIAS_EXECUTION_WORKER_PORT",
        "AIAS_EXECUTION_WORKER_METRICS_PORT",
        50055,
        9105,
        needs=("artifacts", "tenancy"),
    ),
    ProcessSpec(
        "execution-alerts",
        "aias.services.execution.alerts_main",
        "AIAS_EXECUTION_ALERTS_PORT",
        "AIAS_EXECUTION_ALERTS_METRICS_PORT",
        50056,
        9106,
    ),
    ProcessSpec(
        "gateway",
        "aias.gateway.main",
        "AIAS_GATEWAY_PORT",
        None,
        8080,
        0,
        needs=("tenancy", "execution", "artifacts", "billing"),
    ),
)
ADDRESS_ENV = {
    "tenancy": "AIAS_TENANCY_ADDR",
    "execution": "AIAS_EXECUTION_ADDR",
    "artifacts": "AIAS_ARTIFACTS_ADDR",
    "billing": "AIAS_BILLING_ADDR",
}
# Started wave by wave, stopped in the reverse order: callers go before the services they call.
WAVES = (
    ("tenancy",),
    ("execution",),
    ("artifacts", "billing"),
    ("execution-worker", "execution-alerts"),
    ("gateway",),
)
# What a process needs beyond its own shutdown grace to exit before the launcher kills it.
EXIT_MARGIN_SECONDS = 5.0
START_TIMEOUT_SECONDS = 60.0
# A process that exits on its own is started again after a back-off: the first, doubled after
# each further exit up to the cap, and back to the first once the process has stayed up for
# STABLE_SECONDS.
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0
SUPERVISE_INTERVAL_SECONDS = 0.25


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LaunchError(Exception):
    """A process did not come up; the message includes the end of its log."""


def instance_name(kind: str, index: int) -> str:
    """The name of a kind's `index`-th process (from 1): the first has the kind's name, so a
    suite of one process per kind is named as before; replicas are numbered from 2."""
    return kind if index == 1 else f"{kind}-{index}"


def parse_replicas(values: list[str]) -> dict[str, int]:
    """`--replicas` values (`kind=N`, several comma-separated or repeated) as {kind: N}."""
    kinds = [spec.name for spec in PROCESSES]
    replicas: dict[str, int] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        kind, _, count = item.partition("=")
        if kind not in kinds:
            raise ValueError(f"unknown process {kind!r} in {item!r}; one of {', '.join(kinds)}")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{item!r}: the count must be a whole number of at least 1")
        replicas[kind] = int(count)
    return replicas


def _restart_delay(crashes: int) -> float:
    """The back-off before a restart, given how often the process failed since it was stable."""
    return float(min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2 ** min(crashes, 16)))


def _how_it_ended(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


@dataclass
class Child:
    """One process of the suite: the OS process running now, and what a restart reuses."""

    name: str
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path | None
    port: int = 0
    metrics_port: int = 0
    started: float = field(default_factory=time.monotonic)
    # When the current process became ready; None while it is starting.
    up_since: float | None = None
    # Exits on its own since it last stayed up for STABLE_SECONDS: the back-off grows with it.
    crashes: int = 0
    # While the back-off runs: when to start the process again.
    restart_at: float | None = None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(logs went to the console)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    """A running suite. `ports` of 0 mean "any free port" (what tests use).

    `replicas` starts more than one process of a kind (one when absent). The first keeps the
    kind's ports and name; the others are named `<kind>-2`, `<kind>-3`, … and listen on free
    ports. Callers of a replicated service get every replica's address (see `address`).
    """

    data_dir: Path
    database: LocalDatabase
    internal_token: str
    admin_token: str
    ports: Mapping[str, int]
    metrics_ports: Mapping[str, int]
    log_dir: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    grace_seconds: float = 10.0
    # The gateway's session-cookie key; a stack given none makes one that lasts as long as it.
    dashboard_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    replicas: Mapping[str, int] = field(default_factory=dict)
    children: dict[str, Child] = field(default_factory=dict)
    public_url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        unknown = set(self.replicas) - {spec.name for spec in PROCESSES}
        if unknown or any(count < 1 for count in self.replicas.values()):
            raise ValueError(f"replicas must name process kinds, each at least 1: {self.replicas}")

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.children['gateway'].port}"

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{child.port}" for child in self.instances("gateway")]

    def instances(self, kind: str) -> list[Child]:
        """The processes of one kind, the first first."""
        return [child for child in self.children.values() if child.spec.name == kind]

    def address(self, kind: str) -> str:
        """The gRPC target callers of `kind` are given: `127.0.0.1:<port>` for one process;
        for replicas, an `ipv4:` list of every one, over which callers' channels balance
        round-robin (as over the addresses a `dns:///` name resolves to)."""
        ports = [child.port for child in self.instances(kind)]
        if len(ports) == 1:
            return f"127.0.0.1:{ports[0]}"
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def _env(self, spec: ProcessSpec, port: int, metrics_port: int) -> dict[str, str]:
        env = {
            # Without docstrings and asserts: about 4 MiB less per process (`make` and the
            # image compile the matching .pyc files). An operator's own value wins.
            "PYTHONOPTIMIZE": "2",
            # No process forks a child that goes on using gRPC (the worker's step processes
            # exec at once), so gRPC's fork handlers only cost: a line outside the JSON log at
            # every step process's start, and a possible deadlock (grpc/grpc#37259).
            "GRPC_ENABLE_FORK_SUPPORT": "false",
            **os.environ,
            **self.extra_env,
            "AIAS_INTERNAL_TOKEN": self.internal_token,
            "AIAS_ADMIN_TOKEN": self.admin_token,
            "AIAS_DASHBOARD_SECRET": self.dashboard_secret,
            "AIAS_APP_DATABASE_URL": self.database.app_url,
            "AIAS_DATA_DIR": str(self.data_dir),
            "AIAS_PUBLIC_URL": self.public_url,
            "AIAS_SHUTDOWN_GRACE_SECONDS": str(self.grace_seconds),
            spec.port_env: str(port),
            "PYTHONUNBUFFERED": "1",
        }
        if spec.metrics_env:
            env[spec.metrics_env] = str(metrics_port)
        for backend in spec.needs:
            env[ADDRESS_ENV[backend]] = self.address(backend)
        env.pop("AIAS_DATABASE_URL", None)  # services get only the application role's URL
        return env

    def environment(self, name: str) -> dict[str, str]:
        """The environment a process of kind `name` gets, listening on any free port: what
        starting one more of it (a second worker, say) needs."""
        spec = next(spec for spec in PROCESSES if spec.name == name)
        return self._env(spec, 0, 0)

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        gateway_port = self.ports.get("gateway", 8080) or _free_port()
        self.public_url = f"http://localhost:{gateway_port}"
        specs = {spec.name: spec for spec in PROCESSES}
        try:
            for wave in WAVES:
                started: list[Child] = []
                for kind in wave:
                    spec = specs[kind]
                    port = (
                        gateway_port
                        if kind == "gateway"
                        else self.ports.get(kind, spec.default_port)
                    )
                    metrics_port = self.metrics_ports.get(kind, spec.default_metrics)
                    for index in range(1, self.replicas.get(kind, 1) + 1):
                        name = instance_name(kind, index)
                        # Replicas after the first take free ports: the kinds' default ports
                        # are neighbours, so "the next one up" would be another kind's.
                        first = index == 1
                        child = self._spawn(
                            spec, port if first else 0, metrics_port if first else 0, name
                        )
                        self.children[name] = child
                        started.append(child)
                for child in started:
                    self._wait_ready(child, timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, spec: ProcessSpec, port: int, metrics_port: int, name: str) -> Child:
        """Starts process `name` of kind `spec` on `port` (0: any free one); a restart passes
        the port it had."""
        ready = self.data_dir / "run" / f"{name}.ready"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        env = self._env(spec, port, metrics_port)
        env["AIAS_READY_FILE"] = str(ready)
        log_path: Path | None = None
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            output = log_path.open("ab")
        # The child gets SIGTERM when the launcher dies, so no process outlives it. The kernel
        # sends it when the thread that started the child ends, which is why the launcher starts
        # and restarts processes from its main thread only.
        process = subprocess.Popen(
            [sys.executable, "-m", "aias.core.launched", str(os.getpid()), spec.module],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
        if output is not None:
            output.close()
        return Child(name, spec, process, ready, log_path, port, metrics_port)

    def _wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise LaunchError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}"
                )
            if self._ready(child):
                child.up_since = time.monotonic()
                return
            time.sleep(0.05)
        raise LaunchError(f"{child.name} was not ready within {timeout:.0f}s:\n{child.log_tail()}")

    def _ready(self, child: Child) -> bool:
        """Whether the process wrote its ready file and (gRPC processes) reports SERVING; learns
        the ports it bound."""
        if not child.ready_file.exists():
            return False
        info = json.loads(child.ready_file.read_text())
        child.port, child.metrics_port = info["port"], info.get("metrics_port", 0)
        return child.spec.name == "gateway" or self._serving(child.port)

    @staticmethod
    def _serving(port: int) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def supervise_once(self) -> list[str]:
        """One look at every process: one that exited on its own is started again after its
        back-off, on the ports it had, so every other process's address for it stays valid.

        `main` calls this a few times a second while the suite runs. Everything that happens is
        logged as JSON; the return value says it in sentences for the console.
        """
        now = time.monotonic()
        events: list[str] = []
        for name, child in list(self.children.items()):
            if child.restart_at is not None:
                if now >= child.restart_at:
                    restarted = self._spawn(child.spec, child.port, child.metrics_port, name)
                    restarted.crashes = child.crashes
                    self.children[name] = restarted
                continue
            code = child.process.poll()
            if code is not None:
                events.append(self._schedule_restart(child, code, now))
            elif child.up_since is None:
                if self._ready(child):
                    child.up_since = now
                    log.info(
                        "process restarted",
                        extra={"process_name": name, "pid": child.process.pid, "port": child.port},
                    )
                    events.append(f"{name} is back (pid {child.process.pid}, port {child.port})")
                elif now - child.started > START_TIMEOUT_SECONDS:
                    log.error(
                        "process did not become ready, killing it", extra={"process_name": name}
                    )
                    child.process.kill()
            elif child.crashes and now - child.up_since >= STABLE_SECONDS:
                child.crashes = 0
        return events

    @staticmethod
    def _schedule_restart(child: Child, code: int, now: float) -> str:
        delay = _restart_delay(child.crashes)
        child.crashes += 1
        child.restart_at = now + delay
        log.error(
            "process exited unexpectedly",
            extra={
                "process_name": child.name,
                "pid": child.process.pid,
                "exit_code": code,
                "restart_in_seconds": delay,
            },
        )
        return (
            f"{child.name} {_how_it_ended(code)}; restarting it in {delay:g}s on port {child.port}"
        )

    def stop(self) -> dict[str, int]:
        """Stops the processes wave by wave, in reverse start order: the gateway drains and exits
        before any backend hears of it, and callers exit before the services they call.

        Each wave gets the shutdown grace; a process still running after it is killed. Returns
        each process's exit code.
        """
        codes: dict[str, int] = {}
        for wave in reversed(WAVES):
            children = [
                child for kind in reversed(wave) for child in reversed(self.instances(kind))
            ]
            for child in children:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds + EXIT_MARGIN_SECONDS
            for child in children:
                codes[child.name] = self._reap(child, deadline)
        self.children.clear()
        return codes

    @staticmethod
    def _reap(child: Child, deadline: float) -> int:
        name = child.name
        try:
            code = child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("killing a process that did not stop in time", extra={"process_name": name})
            child.process.kill()
            code = child.process.wait()
        log.info("process exited", extra={"process_name": name, "exit_code": code})
        return code


def launch(
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    *,
    any_port: bool = False,
    log_dir: Path | None = None,
    replicas: Mapping[str, int] | None = None,
) -> Stack:
    """Prepares the database and starts every process (`replicas` of a kind: that many);
    `any_port` binds everything to port 0."""
    env = Env(environ)
    database_url = env.text("AIAS_DATABASE_URL", "") or None
    app_password = env.text("AIAS_APP_DB_PASSWORD", "") or None
    internal = env.text("AIAS_INTERNAL_TOKEN", "") or kept_secret(data_dir, "internal-token")
    admin = env.text("AIAS_ADMIN_TOKEN", "") or kept_secret(data_dir, "admin-token")
    dashboard = env.text("AIAS_DASHBOARD_SECRET", "") or kept_secret(data_dir, "dashboard-secret")
    ports = {
        spec.name: 0 if any_port else env.integer(spec.port_env, spec.default_port, maximum=65535)
        for spec in PROCESSES
    }
    metrics = {
        spec.name: 0
        if any_port or spec.metrics_env is None
        else env.integer(spec.metrics_env, spec.default_metrics, maximum=65535)
        for spec in PROCESSES
    }
    embedded_port = 0 if any_port else env.integer("AIAS_EMBEDDED_PG_PORT", 54329, maximum=65535)
    embedded_settings = env.settings("AIAS_EMBEDDED_PG_SETTINGS")
    grace = env.number("AIAS_SHUTDOWN_GRACE_SECONDS", 10.0)
    env.check()
    database = prepare(
        data_dir,
        database_url,
        app_password,
        embedded_port=embedded_port,
        embedded_settings=embedded_settings,
    )
    stack = Stack(
        data_dir,
        database,
        internal,
        admin,
        ports,
        metrics,
        log_dir=log_dir,
        extra_env=dict(environ) if environ is not None else {},
        grace_seconds=grace,
        dashboard_secret=dashboard,
        replicas=replicas or {},
    )
    try:
        stack.start()
    except BaseException:
        database.stop()
        raise
    return stack


def main(argv: list[str] | None = None) -> None:
    """Entry point of `aias-run` / `make run`: start everything, print the URLs, stop on Ctrl-C."""
    from aias.core.logging import configure_logging

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("AIAS_DATA_DIR", ".data")).resolve()
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="KIND=N",
        help="run N processes of a kind, e.g. execution-worker=3,gateway=2 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as error:
        parser.error(str(error))
    configure_logging("launcher", os.environ.get("AIAS_LOG_LEVEL", "INFO").upper())
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stack = launch(args.data_dir, replicas=replicas)
    try:
        gateway, *more_gateways = (
            f"http://localhost:{child.port}" for child in stack.instances("gateway")
        )
        # Where to find the token, never the token: consoles end up in scrollback and CI logs.
        token_at = (
            "the AIAS_ADMIN_TOKEN you set"
            if os.environ.get("AIAS_ADMIN_TOKEN", "").strip()
            else f"in {args.data_dir / 'admin-token'}"
        )
        print(
            f"\nAIAS is up.\n  gateway:        {gateway}\n"
            + (f"  more gateways:  {', '.join(more_gateways)}\n" if more_gateways else "")
            + f"  dashboard:      {gateway}/dashboard (sign in with an admin API key)\n"
            f"  operator token: {token_at}\n"
            f"  services:       "
            + ", ".join(f"{n} :{c.port}" for n, c in stack.children.items())
            + f"\n  data folder:    {args.data_dir}\n"
            f"Try: curl -s {gateway}/readyz\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            for event in stack.supervise_once():
                print(event, flush=True)
            time.sleep(SUPERVISE_INTERVAL_SECONDS)
    finally:
        stack.stop()
        stack.database.stop()
        print("AIAS stopped.", flush=True)


if __name__ == "__main__":
    main()
