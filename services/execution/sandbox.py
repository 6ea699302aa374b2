"""Runs workflow steps in a pool of child processes, each step bounded in time, memory and output."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import resource
import signal
import struct
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from aias.core.errors import DomainError, clip
from aias.services.execution.domain import decode_payload, decode_response
from aias.services.execution.steps import (
    ArtifactOutput,
    HttpRequest,
    HttpResponse,
    StepContext,
    StepFailed,
    canonical_json,
    load_libraries,
    read_response,
    run_step,
    sha256_hex,
)

log = logging.getLogger(__name__)

STEP_TIMEOUT = "STEP_TIMEOUT"
STEP_MEMORY = "STEP_MEMORY"
STEP_OUTPUT_TOO_LARGE = "STEP_OUTPUT_TOO_LARGE"
STEP_ERROR = "STEP_ERROR"
STEP_CRASHED = "STEP_CRASHED"

JSON = "application/json"

# A request is (header length, value length), the JSON header, the value. A reply is
# (metadata length, value length, artifact length), the JSON metadata, the value, the artifact
# (or the body of the request an http_request step asks the worker to send).
_REQUEST = struct.Struct(">II")
_REPLY = struct.Struct(">III")
_READY = b"R"
# A request's value up to this size is copied into the frame it goes out in.
_JOINED_BYTES = 64 * 1024
# Texts in a reply are clipped, so its metadata stays far below _META_BYTES.
_TEXT_CHARS = 1000
_META_BYTES = 64 * 1024
# The kernel's CPU-time limit ends a step this long after its timeout if the worker did not.
_CPU_BACKSTOP_SECONDS = 2
# A child whose address space after a step is still more than a quarter of its limit above its
# size at start is replaced, so one large step does not leave the next (perhaps another
# tenant's) less room.
_RETIRE_SHARE = 4
_START_SECONDS = 30.0
_RESPAWN_DELAY_SECONDS = 1.0
_EXIT_WAIT_SECONDS = 1.0
# Values without objects serialise the same with and without sorted keys.
_ORDERLESS = (str, int, float, bool, type(None))
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class StepLimits:
    """One step's bounds: wall-clock seconds, and bytes of its value and of its artifact each."""

    timeout: float
    output_bytes: int


@dataclass(frozen=True)
class StepCall:
    """A step to run on the current value (bytes of `content_type`) in its run's context.

    With `response`, the call reads an http_request step's response (the value is its body)
    into the step's value instead.
    """

    type: str
    config: Mapping[str, Any]
    value: bytes
    content_type: str
    context: StepContext
    response: HttpResponse | None = None


@dataclass(frozen=True)
class StepOutcome:
    """A step's result as the worker keeps it.

    `value` is the next value as JSON in the step's own key order (what the next step reads);
    its length equals the canonical JSON's, whose SHA-256 is `output_sha256`.
    """

    value: bytes
    message: str
    stop: bool
    output_sha256: str
    artifact: ArtifactOutput | None
    request: HttpRequest | None = None


@dataclass(frozen=True)
class _Reply:
    """A child's answer: an outcome or a failure text, and whether the child may serve again."""

    outcome: StepOutcome | None
    failure: str
    reusable: bool


class _Child:
    """One long-lived step process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None, "started with a pipe"
        assert process.stdout is not None, "started with a pipe"
        self.process = process
        self.requests = process.stdin
        self.replies = process.stdout


class _Turns:
    """Idle step processes, handed to waiting steps one tenant at a time, in turn.

    A worker may hold more runs than it has step processes; then steps wait here. Waiting in one
    line, a tenant with many runs in flight (a flood, or steps that spin to their time limit)
    would stand in front of every other tenant's step; in turns, another tenant's step waits
    for at most one step of each tenant ahead of it.
    """

    def __init__(self) -> None:
        self._idle: deque[_Child] = deque()
        # Tenants with steps waiting, in the order of their turns.
        self._waiting: dict[str, deque[asyncio.Future[_Child]]] = {}

    def put(self, child: _Child) -> None:
        """A process is free: the next tenant in turn gets it, or it waits idle."""
        while self._waiting:
            tenant = next(iter(self._waiting))
            queue = self._waiting.pop(tenant)
            step = queue.popleft()
            if queue:
                self._waiting[tenant] = queue  # its next step waits for its next turn
            if not step.done():
                step.set_result(child)
                return
        self._idle.append(child)

    async def get(self, tenant: str) -> _Child:
        # A process waits idle only while no step waits.
        if self._idle:
            return self._idle.popleft()
        step: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(step)
        try:
            return await step
        except asyncio.CancelledError:
            if step.done() and not step.cancelled():
                self.put(step.result())  # handed over as the step was cancelled: pass it on
            raise


class StepRunner:
    """A pool of long-lived step processes.

    Each step runs in an idle child; the worker's event loop only awaits its reply. A step over
    its time limit is killed (SIGKILL) and its child replaced; so is a child that ran out of
    memory, broke the protocol or died. Children are fresh interpreters (`python -m`, exec'd at
    once: a plain fork of the worker, with its gRPC threads and event loop, would be unsafe)
    with an environment free of the worker's secrets; they talk JSON and raw bytes over pipes,
    so nothing a child sends is unpickled by the worker.
    """

    def __init__(self, processes: int, memory_bytes: int) -> None:
        self._size = processes
        self._memory_bytes = memory_bytes
        self._turns = _Turns()
        self._children: set[_Child] = set()
        self._respawns: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self._size)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                await self.close()
                raise result
            self._turns.put(result)

    async def close(self) -> None:
        """Kills every child and waits for each, so none is left behind as a zombie."""
        self._closed = True
        for task in self._respawns:
            task.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        for child in self._children:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        await asyncio.gather(*(child.process.wait() for child in self._children))
        self._children.clear()

    async def run(self, call: StepCall, limits: StepLimits, tenant: str = "") -> StepOutcome:
        """Runs one step (waiting for a free process in the tenant's turn); raises StepFailed,
        its text starting with a reason code when the step broke a limit or its process
        failed."""
        child = await self._turns.get(tenant)
        while child.process.returncode is not None:
            self._replace(child)
            child = await self._turns.get(tenant)
        reply: _Reply | None = None
        try:
            async with asyncio.timeout(limits.timeout):
                reply = await self._exchange(child, call, limits)
        except TimeoutError:
            raise StepFailed(
                f"{STEP_TIMEOUT}: the step ran longer than {limits.timeout:g} s"
            ) from None
        finally:
            if reply is not None and reply.reusable:
                self._turns.put(child)
            else:
                self._replace(child)
        if reply.outcome is None:
            raise StepFailed(reply.failure)
        return reply.outcome

    async def _exchange(self, child: _Child, call: StepCall, limits: StepLimits) -> _Reply:
        header = json.dumps(
            {
                "type": call.type,
                "config": call.config,
                "content_type": call.content_type,
                "context": {"run": call.context.run, "workflow": call.context.workflow},
                "timeout": limits.timeout,
                "output_bytes": limits.output_bytes,
                "response": None if call.response is None else call.response.describe(),
            },
            separators=(",", ":"),
        ).encode()
        frame = _REQUEST.pack(len(header), len(call.value)) + header
        if len(call.value) <= _JOINED_BYTES:
            # One write, so the child wakes once (each write to its pipe wakes it).
            child.requests.write(frame + call.value)
        else:
            child.requests.writelines((frame, call.value))
        try:
            await child.requests.drain()
            sizes = _REPLY.unpack(await child.replies.readexactly(_REPLY.size))
            meta_size, value_size, artifact_size = sizes
            if meta_size > _META_BYTES or max(value_size, artifact_size) > limits.output_bytes:
                # The child checks sizes before it answers; one that does not is not trusted.
                text = _over_limit(limits.output_bytes)
                return _Reply(None, f"{STEP_OUTPUT_TOO_LARGE}: {text}", reusable=False)
            meta = await child.replies.readexactly(meta_size)
            value = await child.replies.readexactly(value_size)
            artifact = await child.replies.readexactly(artifact_size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return _Reply(None, await self._cause_of_death(child, limits), reusable=False)
        try:
            return _parse_reply(meta, value, artifact)
        except (ValueError, KeyError, TypeError):
            return _Reply(None, f"{STEP_CRASHED}: the step's process sent a malformed reply", False)

    async def _cause_of_death(self, child: _Child, limits: StepLimits) -> str:
        try:
            code = await asyncio.wait_for(child.process.wait(), _EXIT_WAIT_SECONDS)
        except TimeoutError:
            return f"{STEP_CRASHED}: the step's process closed its pipe without an answer"
        if code == -signal.SIGXCPU:
            return f"{STEP_TIMEOUT}: the step used more than {limits.timeout:g} s of CPU time"
        return f"{STEP_CRASHED}: the step's process died ({_exit_text(code)})"

    def _replace(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        if self._closed:
            return
        task = asyncio.create_task(self._respawn(child), name="respawn-step-process")
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, dead: _Child) -> None:
        await dead.process.wait()
        self._children.discard(dead)
        while True:
            try:
                child = await self._spawn()
            except Exception:
                log.exception("a step process could not be started; trying again")
                await asyncio.sleep(_RESPAWN_DELAY_SECONDS)
                continue
            self._turns.put(child)
            return

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(os.getpid()),
            str(self._memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_environment(),
        )
        child = _Child(process)
        self._children.add(child)
        try:
            ready = await asyncio.wait_for(child.replies.readexactly(len(_READY)), _START_SECONDS)
        except (asyncio.IncompleteReadError, TimeoutError):
            ready = b""
        if ready != _READY:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
            self._children.discard(child)
            raise RuntimeError(
                f"a step process did not start ({_exit_text(code)}); its errors are logged above"
            )
        return child


def _child_environment() -> dict[str, str]:
    """What a child needs and nothing else: none of the worker's credentials."""
    environment = {
        # Large blocks always come from mmap and go back to the system when freed, so a
        # step's peak does not linger in the heap of a long-lived child.
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    if "PYTHONPATH" in os.environ:
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return environment


def _exit_text(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _over_limit(limit: int) -> str:
    return f"the step's output is over the limit of {limit:,} bytes"


def _parse_reply(meta_bytes: bytes, value: bytes, artifact: bytes) -> _Reply:
    meta = json.loads(meta_bytes)
    reusable = not meta["retire"]
    if "error" in meta:
        reason, text = meta["error"], meta["text"]
        return _Reply(None, f"{reason}: {text}" if reason else str(text), reusable)
    spec, asked = meta["artifact"], meta["request"]
    output = None
    if spec is not None:
        output = ArtifactOutput(str(spec["name"]), str(spec["media_type"]), artifact)
    request = None if asked is None else HttpRequest.from_description(asked, artifact)
    outcome = StepOutcome(
        value, str(meta["message"]), meta["stop"] is True, str(meta["sha256"]), output, request
    )
    return _Reply(outcome, "", reusable)


# -- the child ------------------------------------------------------------------------------


def _child_main(parent: int, memory_bytes: int) -> None:
    # The worker's death kills the child: it holds nothing worth finishing. The flag is tied
    # to the thread that started the child, the worker's event-loop thread, which lives as
    # long as the worker.
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        return  # the worker died before the flag was set
    # Ctrl-C belongs to the worker, which then closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A step over its CPU time dies by SIGXCPU, which would otherwise write a core file.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The step types' libraries, loaded before the memory limit and the baseline below.
    load_libraries()
    # The hard limit too: code that escaped the template sandbox cannot raise it again.
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # The protocol owns the pipes; anything a library prints goes to the worker's log instead.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    _serve(requests, replies, memory_bytes)


def _serve(requests: IO[bytes], replies: IO[bytes], memory_bytes: int) -> None:
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    retire_above = _address_space(statm) + memory_bytes // _RETIRE_SHARE
    replies.write(_READY)
    replies.flush()
    while True:
        head = requests.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return  # the worker closed the pipe
        header_size, value_size = _REQUEST.unpack(head)
        header = json.loads(requests.read(header_size))
        value = requests.read(value_size)
        _limit_cpu(header["timeout"], cpu_hard)
        parts, retire = _answer(header, value, memory_bytes)
        retire = retire or _address_space(statm) > retire_above
        for part in _reply(parts, retire):
            replies.write(part)
        replies.flush()


def _limit_cpu(timeout: float, hard: int) -> None:
    """The kernel's backstop: SIGXCPU if this step's CPU time passes its timeout by a margin."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + timeout) + _CPU_BACKSTOP_SECONDS
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _address_space(statm: int) -> int:
    """The bytes of address space in use now: what RLIMIT_AS counts."""
    return int(os.pread(statm, 64, 0).split(maxsplit=1)[0]) * resource.getpagesize()


def _answer(
    header: dict[str, Any], value: bytes, memory_bytes: int
) -> tuple[tuple[dict[str, Any], bytes, bytes], bool]:
    """The reply's parts, and whether the child must be replaced (after a MemoryError)."""
    failure: tuple[str | None, str]
    try:
        return _run(header, value), False
    except MemoryError:
        # Nothing is allocated here: the memory is freed only once this block is left.
        failure = (STEP_MEMORY, "")
    except StepFailed as error:
        failure = (None, str(error))
    except DomainError as error:
        failure = (error.reason, error.message)
    except Exception as error:
        failure = (STEP_ERROR, f"{type(error).__name__}: {error}")
    reason, text = failure
    if reason == STEP_MEMORY:
        text = f"the step needed more than the {memory_bytes / 2**20:g} MiB of memory it may use"
    return ({"error": reason, "text": clip(text, _TEXT_CHARS)}, b"", b""), reason == STEP_MEMORY


def _run(header: dict[str, Any], raw: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    limit: int = header["output_bytes"]
    if header["response"] is not None:
        response = HttpResponse.from_description(header["response"])
        result = read_response(response, decode_response(raw, header["content_type"]))
    else:
        context = StepContext(header["context"]["run"], header["context"]["workflow"])
        result = run_step(
            header["type"], header["config"], decode_payload(raw, header["content_type"]), context
        )
    if isinstance(result.value, str) and len(result.value) > limit:
        # Certainly too large (JSON is at least as long): refused before it is copied.
        raise DomainError(STEP_OUTPUT_TOO_LARGE, _over_limit(limit))
    output = canonical_json(result.value)
    artifact, request = result.artifact, result.request
    if artifact is not None:
        attachment = artifact.content
    elif request is not None:
        attachment = request.body
    else:
        attachment = b""
    if len(output) > limit or len(attachment) > limit:
        raise DomainError(STEP_OUTPUT_TOO_LARGE, _over_limit(limit))
    forward = (
        output
        if isinstance(result.value, _ORDERLESS)
        else json.dumps(
            result.value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    )
    meta = {
        "message": clip(result.message, _TEXT_CHARS),
        "stop": result.stop,
        "sha256": sha256_hex(output),
        "artifact": None
        if artifact is None
        else {"name": artifact.name, "media_type": artifact.media_type},
        "request": None if request is None else request.describe(),
    }
    return meta, forward, attachment


def _reply(parts: tuple[dict[str, Any], bytes, bytes], retire: bool) -> list[bytes]:
    meta, value, artifact = parts
    encoded = json.dumps({**meta, "retire": retire}, separators=(",", ":")).encode()
    return [_REPLY.pack(len(encoded), len(value), len(artifact)), encoded, value, artifact]


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]))
