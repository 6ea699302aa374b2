"""What the launcher puts in every process's environment: no docstrings and asserts
(PYTHONOPTIMIZE=2) unless the operator sets the level, and no gRPC fork handlers."""

from __future__ import annotations

import os
from pathlib import Path

from aias.core.launcher import PROCESSES, Stack
from aias.core.localdb import LocalDatabase


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_every_process_of_the_suite_runs_at_optimization_level_2(stack: Stack) -> None:
    # The launcher's default, unless whoever runs the tests set a level of their own.
    expected = os.environ.get("PYTHONOPTIMIZE", "2")
    levels = {
        name: _environ(child.process.pid)["PYTHONOPTIMIZE"]
        for name, child in stack.children.items()
    }
    assert levels == dict.fromkeys(stack.children, expected)
    assert set(levels) == {spec.name for spec in PROCESSES}


def test_the_operators_level_wins(stack_database: LocalDatabase, tmp_path: Path) -> None:
    ports = {spec.name: 0 for spec in PROCESSES}
    chosen = Stack(
        tmp_path, stack_database, "t", "a", ports, ports, extra_env={"PYTHONOPTIMIZE": "0"}
    )
    assert chosen.environment("tenancy")["PYTHONOPTIMIZE"] == "0"


def test_step_processes_start_without_grpc_fork_lines_in_the_workers_log(stack: Stack) -> None:
    # The worker started its step processes (fork and exec) before the suite was ready.
    assert stack.log_dir is not None
    log = (stack.log_dir / "execution-worker.log").read_text(errors="replace")
    assert log.strip(), "the worker logs its start"
    # gRPC's fork handlers, when on, wrote "fork_posix.cc:… skipping fork() handlers" per start.
    assert [line for line in log.splitlines() if "fork_posix" in line] == []
    fork_support = {
        _environ(child.process.pid).get("GRPC_ENABLE_FORK_SUPPORT")
        for child in stack.children.values()
    }
    assert fork_support == {os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "false")}
