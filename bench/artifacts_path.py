"""Artifact throughput (100 MiB) through the suite beside bare aiohttp serving the same file.

Download: GET /api/artifacts/{id}/download through the gateway (which streams the artifacts
service's server-streaming RPC) beside `aiohttp.web.FileResponse` of the very blob file.
Upload: the internal UploadArtifact client stream (there is no public upload route) beside an
aiohttp POST to a bare server that writes the body to a file, once deleting the file at once and
once keeping it synced to disk as UploadArtifact does (on a virtual machine, fresh page-cache
pages cost several times what recycled ones do). Rounds alternate, so both sides
see the same machine; the figures are medians, the goal is a ratio of at least 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import blake3

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.launcher import Stack
from bench.common import (
    cpu_seconds,
    machine,
    new_hook,
    print_machine,
    rss_mib,
    suite,
    write_json,
)

MIB = 1024 * 1024
SIZE = 100 * MIB
CHUNK = MIB


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def _read_all(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    size = 0
    async with http.get(url, headers=headers) as response:
        response.raise_for_status()
        async for data in response.content.iter_chunked(CHUNK):
            size += len(data)
    if size != SIZE:
        raise RuntimeError(f"{url} sent {size} bytes, not {SIZE}")
    return size


async def _a_run(url: str, hook_path: str, key: str) -> str:
    """A finished run of the tenant's workflow, for the uploaded artifacts to belong to."""
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post(hook_path, json={"id": 1}) as response:
            run_id: str = (await response.json())["run_id"]
        for _ in range(300):
            async with http.get(f"/api/runs/{run_id}", headers=auth) as response:
                if (await response.json())["run"]["status"] not in ("queued", "running"):
                    return run_id
            await asyncio.sleep(0.1)
    raise RuntimeError("the run did not finish")


def _content(round_number: int, base: bytes) -> bytes:
    """The base bytes made unique per round, so every upload stores a new blob."""
    return round_number.to_bytes(8, "big") + base[8:]


async def _upload(
    stub: pb_grpc.ArtifactsServiceAsyncStub, tenant_id: str, run_id: str, name: str, data: bytes
) -> pb.Artifact:
    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(
            metadata=pb.UploadArtifactMetadata(
                run_id=run_id, step_id="bench", name=name, media_type="application/octet-stream"
            )
        )
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            yield pb.UploadArtifactRequest(chunk=bytes(view[start : start + CHUNK]))

    reply: pb.UploadArtifactResponse = await stub.UploadArtifact(
        messages(), metadata=(("x-aias-tenant-id", tenant_id),)
    )
    return reply.artifact


async def _post_all(http: aiohttp.ClientSession, url: str, data: bytes) -> None:
    async def body() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            yield bytes(view[start : start + CHUNK])

    async with http.post(url, data=body()) as response:
        response.raise_for_status()


def _hashed_per_second(digest: Callable[[bytes], Any], data: bytes) -> float:
    began = time.perf_counter()
    digest(data).hexdigest()
    return round(len(data) / MIB / (time.perf_counter() - began), 1)


def _minor_faults(pid: int) -> int:
    """Page faults so far that needed no disk: fresh or reused pages of the process's memory."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


async def _timed(transfer: Awaitable[Any]) -> float:
    """MiB per second of one transfer of SIZE bytes."""
    began = time.perf_counter()
    await transfer
    return SIZE / MIB / (time.perf_counter() - began)


async def _run(stack: Stack, rounds: int, work: Path) -> dict[str, Any]:
    hook = await new_hook(stack.gateway_url, stack.admin_token)
    run_id = await _a_run(stack.gateway_url, hook.path, hook.key)
    base = os.urandom(SIZE)
    channel = internal_channel(stack.address("artifacts"), stack.internal_token)
    stub = cast("pb_grpc.ArtifactsServiceAsyncStub", pb_grpc.ArtifactsServiceStub(channel))
    artifact = await _upload(stub, hook.tenant_id, run_id, "download.bin", base)
    (blob,) = (stack.data_dir / "artifacts").glob(f"*/sha256/*/{artifact.sha256}")
    uploads = work / "uploads"
    uploads.mkdir()
    port, copying_port = _free_port(), _free_port()
    arguments = ("--file", str(blob), "--uploads", str(uploads))
    bare = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.bare_files", "--port", str(port)), *arguments
    )
    # The same server with sendfile off: FileResponse then reads and writes in chunks, as any
    # server must that does something with the bytes on their way (here: hashing them).
    copying = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.bare_files", "--port", str(copying_port)),
        *arguments,
        env={**os.environ, "AIOHTTP_NOSENDFILE": "1"},
    )
    auth = {"Authorization": f"Bearer {hook.key}"}
    download_cpu: dict[str, list[float]] = {"gateway": [], "artifacts": []}
    upload_cpu: list[float] = []
    upload_faults: list[int] = []
    artifacts_pid = stack.children["artifacts"].process.pid
    figures: dict[str, list[float]] = {
        "download_gateway": [],
        "download_file_response": [],
        "download_file_response_no_sendfile": [],
        "upload_grpc": [],
        "upload_bare_post": [],
        "upload_bare_post_kept": [],
    }
    try:
        await asyncio.to_thread(_wait_listening, port)
        await asyncio.to_thread(_wait_listening, copying_port)
        bare_url = f"http://127.0.0.1:{port}"
        copying_url = f"http://127.0.0.1:{copying_port}"
        download_url = f"{stack.gateway_url}/api/artifacts/{artifact.id}/download"
        async with aiohttp.ClientSession() as http:
            # One untimed pass of each warms the page cache and the connections.
            await _read_all(http, download_url, auth)
            await _read_all(http, f"{bare_url}/file", {})
            await _read_all(http, f"{copying_url}/file", {})
            for number in range(1, rounds + 1):
                data = _content(number, base)
                before = cpu_seconds(stack)
                figures["download_gateway"].append(
                    await _timed(_read_all(http, download_url, auth))
                )
                after = cpu_seconds(stack)
                for kind in ("gateway", "artifacts"):
                    download_cpu[kind].append(after[kind] - before[kind])
                figures["download_file_response"].append(
                    await _timed(_read_all(http, f"{bare_url}/file", {}))
                )
                figures["download_file_response_no_sendfile"].append(
                    await _timed(_read_all(http, f"{copying_url}/file", {}))
                )
                before, faults = cpu_seconds(stack), _minor_faults(artifacts_pid)
                figures["upload_grpc"].append(
                    await _timed(_upload(stub, hook.tenant_id, run_id, f"up-{number}.bin", data))
                )
                upload_cpu.append(cpu_seconds(stack)["artifacts"] - before["artifacts"])
                upload_faults.append(_minor_faults(artifacts_pid) - faults)
                figures["upload_bare_post"].append(
                    await _timed(_post_all(http, f"{bare_url}/upload", data))
                )
                figures["upload_bare_post_kept"].append(
                    await _timed(_post_all(http, f"{bare_url}/upload?keep=1", data))
                )
    finally:
        for server in (bare, copying):
            server.terminate()
            await server.wait()
        await channel.close()
    medians = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    return {
        # Both artifact paths hash every byte: an upload with SHA-256 (its name) and BLAKE3,
        # a download with BLAKE3 (its check). Each on one core of this machine:
        "sha256_mib_per_second": _hashed_per_second(hashlib.sha256, base),
        "blake3_mib_per_second": _hashed_per_second(blake3.blake3, base),
        "size_mib": SIZE // MIB,
        "rounds": rounds,
        "mib_per_second": medians,
        "every_round": {name: [round(v, 1) for v in values] for name, values in figures.items()},
        "download_ratio": round(medians["download_gateway"] / medians["download_file_response"], 2),
        "download_ratio_no_sendfile": round(
            medians["download_gateway"] / medians["download_file_response_no_sendfile"], 2
        ),
        "upload_ratio": round(medians["upload_grpc"] / medians["upload_bare_post"], 2),
        "upload_ratio_kept": round(medians["upload_grpc"] / medians["upload_bare_post_kept"], 2),
        # CPU seconds each hop spends per download of SIZE bytes (user and system, threads
        # included), in milliseconds: what bounds the throughput when the cores are shared.
        "download_cpu_ms": {
            kind: round(statistics.median(values) * 1000) for kind, values in download_cpu.items()
        },
        # The artifacts service's CPU milliseconds and minor page faults per upload.
        "upload_cpu_ms_artifacts": round(statistics.median(upload_cpu) * 1000),
        "upload_minor_faults_artifacts": round(statistics.median(upload_faults)),
        "rss_mib_after": rss_mib(stack),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write the JSON here, not to bench/results")
    arguments = parser.parse_args()
    print_machine(machine())
    with suite() as stack, tempfile.TemporaryDirectory(prefix="aias-bench-files-") as work:
        result = asyncio.run(_run(stack, arguments.rounds, Path(work)))
    speeds = result["mib_per_second"]
    print(f"artifact of {result['size_mib']} MiB, medians of {result['rounds']} rounds, MiB/s:")
    print(
        f"  download: gateway {speeds['download_gateway']}, "
        f"FileResponse {speeds['download_file_response']}, ratio {result['download_ratio']}"
    )
    print(
        f"            FileResponse without sendfile {speeds['download_file_response_no_sendfile']}, "
        f"ratio {result['download_ratio_no_sendfile']}"
    )
    print(
        f"  upload:   UploadArtifact {speeds['upload_grpc']}, "
        f"bare POST {speeds['upload_bare_post']}, ratio {result['upload_ratio']}"
    )
    print(
        f"            bare POST kept and synced {speeds['upload_bare_post_kept']}, "
        f"ratio {result['upload_ratio_kept']}"
    )
    cpu = result["download_cpu_ms"]
    print(f"  CPU per download, ms: gateway {cpu['gateway']}, artifacts {cpu['artifacts']}")
    print(
        f"  per upload, artifacts: CPU {result['upload_cpu_ms_artifacts']} ms, "
        f"{result['upload_minor_faults_artifacts']} minor page faults"
    )
    print(
        f"  one core hashes, MiB/s: SHA-256 {result['sha256_mib_per_second']}, "
        f"BLAKE3 {result['blake3_mib_per_second']}"
    )
    print(f"  resident memory after, MiB: {result['rss_mib_after']}")
    write_json("artifacts-path", result, arguments.output)


if __name__ == "__main__":
    main()
