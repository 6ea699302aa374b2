"""Steps in real child processes: same results as in-process, and every limit enforced."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from aias.services.execution.sandbox import JSON, StepCall, StepLimits, StepRunner
from aias.services.execution.steps import (
    StepContext,
    StepFailed,
    canonical_json,
    run_step,
    sha256_hex,
)

MEMORY = 256 * 2**20
LIMITS = StepLimits(timeout=2.0, output_bytes=2**20)
CONTEXT = StepContext(
    run={"id": "r-1", "attempt": 1, "create_time": "2026-01-02T03:04:05Z"},
    workflow={"id": "w-1", "version": 2},
)
ORDER = {"id": "o-1", "items": [{"sku": "a", "price": 2.5}, {"sku": "b", "price": 4}]}
# Jinja's sandbox caps range() at 100,000 items; nested, the loops run for hours.
SPIN = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[StepRunner]:
    pool = StepRunner(processes=2, memory_bytes=MEMORY)
    await pool.start()
    yield pool
    await pool.close()


def _call(step_type: str, config: dict[str, Any], value: Any) -> StepCall:
    return StepCall(step_type, config, json.dumps(value).encode(), JSON, CONTEXT)


def _template(template: str) -> StepCall:
    return _call("template", {"template": template}, ORDER)


def _step_processes(parent: psutil.Process | None = None) -> set[int]:
    found = set()
    for child in (parent or psutil.Process()).children():
        try:
            if "aias.services.execution.sandbox" in child.cmdline():
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


async def _replaced(before: set[int]) -> set[int]:
    """Waits until the pool has its full size again with one process new."""
    for _ in range(100):
        now = _step_processes()
        if len(now) == len(before) and len(now & before) == len(before) - 1:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"step processes {before} became {_step_processes()}")


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("step_type", "config", "value"),
    [
        ("transform", {"expression": "{order: id, total: sum(items[].price)}"}, ORDER),
        ("filter", {"condition": "total > `10`"}, {"total": 3}),
        ("validate", {"schema": {"type": "object", "required": ["id"]}}, {"z": 1, "id": "x"}),
        ("template", {"template": "{{ input.id }} {{ run.id }} {{ workflow.version }}"}, ORDER),
        ("artifact", {"name": "rows.csv", "format": "csv"}, [{"b": 1, "a": "é"}]),
        ("artifact", {"name": "order.json", "format": "json"}, ORDER),
    ],
)
async def test_a_step_gives_the_same_result_as_in_process(
    runner: StepRunner, step_type: str, config: dict[str, Any], value: Any
) -> None:
    expected = run_step(step_type, config, value, CONTEXT)
    outcome = await runner.run(_call(step_type, config, value), LIMITS)
    # The next value keeps its key order; the logged digest is of the canonical JSON.
    assert (
        outcome.value
        == json.dumps(expected.value, ensure_ascii=False, separators=(",", ":")).encode()
    )
    assert outcome.output_sha256 == sha256_hex(canonical_json(expected.value))
    assert (outcome.message, outcome.stop, outcome.artifact) == (
        expected.message,
        expected.stop,
        expected.artifact,
    )


async def test_the_first_step_decodes_the_payload(runner: StepRunner) -> None:
    call = StepCall("template", {"template": "<{{ input.text }}>"}, b"hello", "text/plain", CONTEXT)
    assert (await runner.run(call, LIMITS)).value == b'"<hello>"'
    broken = StepCall("transform", {"expression": "a"}, b"{nope", JSON, CONTEXT)
    with pytest.raises(StepFailed, match=r"^INVALID_PAYLOAD: "):
        await runner.run(broken, LIMITS)


async def test_failing_steps_keep_their_reasons(runner: StepRunner) -> None:
    schema = {"type": "object", "required": ["missing"]}
    with pytest.raises(StepFailed, match=r"^input does not match the schema"):
        await runner.run(_call("validate", {"schema": schema}, ORDER), LIMITS)
    with pytest.raises(StepFailed, match=r"^STEP_ERROR: ZeroDivisionError: division by zero$"):
        await runner.run(_template("{{ 1 / 0 }}"), LIMITS)


async def test_a_spinning_step_times_out_and_its_process_is_replaced(runner: StepRunner) -> None:
    before = _step_processes()
    started = time.monotonic()
    with pytest.raises(StepFailed, match=r"^STEP_TIMEOUT: the step ran longer than 0.5 s$"):
        await runner.run(_template(SPIN), StepLimits(timeout=0.5, output_bytes=2**20))
    assert time.monotonic() - started < 1.5
    await _replaced(before)
    assert (await runner.run(_template("ok"), LIMITS)).value == b'"ok"'


async def test_a_memory_hungry_step_fails_and_its_process_is_replaced(runner: StepRunner) -> None:
    before = _step_processes()
    with pytest.raises(StepFailed, match=r"^STEP_MEMORY: the step needed more than the 256 MiB"):
        await runner.run(_template("{{ 'ab' * 150000000 }}"), LIMITS)
    await _replaced(before)
    assert (await runner.run(_template("ok"), LIMITS)).value == b'"ok"'


async def test_an_output_over_the_limit_fails_the_step(runner: StepRunner) -> None:
    before = _step_processes()
    small = StepLimits(timeout=2.0, output_bytes=1000)
    with pytest.raises(StepFailed, match=r"^STEP_OUTPUT_TOO_LARGE: .* 1,000 bytes$"):
        await runner.run(_template("{{ 'x' * 1001 }}"), small)
    rows = [["x" * 100] for _ in range(10)]
    with pytest.raises(StepFailed, match=r"^STEP_OUTPUT_TOO_LARGE: "):
        await runner.run(_call("artifact", {"name": "a.txt", "format": "text"}, rows), small)
    assert (await runner.run(_template("{{ 'x' * 998 }}"), small)).value == b'"' + b"x" * 998 + b'"'
    # Nothing went wrong in the process: it keeps serving.
    assert _step_processes() == before


async def test_a_busy_process_does_not_hold_up_the_others(runner: StepRunner) -> None:
    before = _step_processes()
    spinning = asyncio.create_task(runner.run(_template(SPIN), StepLimits(1.0, 2**20)))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await runner.run(_call("transform", {"expression": "id"}, ORDER), LIMITS)
    assert time.monotonic() - started < 0.5  # the other step spins for 1 s
    with pytest.raises(StepFailed, match=r"^STEP_TIMEOUT: "):
        await spinning
    await _replaced(before)


@pytest.mark.parametrize(
    ("signum", "failure"),
    [
        (signal.SIGKILL, r"^STEP_CRASHED: the step's process died \(SIGKILL\)$"),
        (signal.SIGXCPU, r"^STEP_TIMEOUT: the step used more than 30 s of CPU time$"),
    ],
)
async def test_a_process_that_dies_fails_its_step(signum: int, failure: str) -> None:
    before = _step_processes()
    pool = StepRunner(processes=1, memory_bytes=MEMORY)
    await pool.start()
    try:
        (pid,) = _step_processes() - before
        spinning = asyncio.create_task(pool.run(_template(SPIN), StepLimits(30.0, 2**20)))
        await asyncio.sleep(0.2)
        psutil.Process(pid).send_signal(signum)
        with pytest.raises(StepFailed, match=failure):
            await spinning
        assert (await pool.run(_template("ok"), LIMITS)).value == b'"ok"'
    finally:
        await pool.close()


async def test_steps_waiting_for_a_process_take_turns_by_tenant() -> None:
    # One process, busy; tenant A queues five steps, then B one: B's runs next after A's
    # first, not after all five, and A's go on after it.
    pool = StepRunner(processes=1, memory_bytes=MEMORY)
    await pool.start()
    finished: list[str] = []

    async def step(tenant: str, text: str) -> None:
        await pool.run(_template(text), LIMITS, tenant)
        finished.append(text)

    try:
        busy = asyncio.create_task(step("a", "a0"))
        await asyncio.sleep(0)  # a0 has the process
        queued = [asyncio.create_task(step("a", f"a{n}")) for n in range(1, 5)]
        await asyncio.sleep(0)
        queued.append(asyncio.create_task(step("b", "b0")))
        await asyncio.gather(busy, *queued)
    finally:
        await pool.close()

    assert finished == ["a0", "a1", "b0", "a2", "a3", "a4"]


async def test_a_step_cancelled_while_waiting_gives_up_its_turn() -> None:
    pool = StepRunner(processes=1, memory_bytes=MEMORY)
    await pool.start()
    try:
        busy = asyncio.create_task(pool.run(_template("first"), LIMITS, "a"))
        await asyncio.sleep(0)
        gone = asyncio.create_task(pool.run(_template("never"), LIMITS, "b"))
        await asyncio.sleep(0)
        gone.cancel()
        assert (await busy).value == b'"first"'
        # The process went to no one (the cancelled step's turn was skipped): it serves now.
        assert (await pool.run(_template("next"), LIMITS, "c")).value == b'"next"'
    finally:
        await pool.close()
    assert gone.cancelled()


async def test_close_leaves_no_process_behind() -> None:
    before = _step_processes()
    pool = StepRunner(processes=2, memory_bytes=MEMORY)
    await pool.start()
    mine = _step_processes() - before
    assert len(mine) == 2
    await pool.close()
    assert all(_gone(pid) for pid in mine)


def test_step_processes_die_with_the_worker() -> None:
    program = (
        "import asyncio\n"
        "from aias.services.execution.sandbox import StepRunner\n"
        "async def main() -> None:\n"
        "    pool = StepRunner(processes=2, memory_bytes=256 * 2**20)\n"
        "    await pool.start()\n"
        "    print('up', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE) as worker:
        assert worker.stdout is not None
        assert worker.stdout.readline() == b"up\n"
        children = _step_processes(psutil.Process(worker.pid))
        assert len(children) == 2
        worker.kill()
    deadline = time.monotonic() + 3
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in children)
