"""A 200 MiB artifact through the real processes: byte-equal, with flat memory in both hops."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.launcher import Stack
from aias.services.artifacts.domain import MAX_CHUNK_BYTES
from aias.services.execution.worker import UPLOAD_CHUNK
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.client import Tenant, expect, new_endpoint, new_tenant, wait_for_run
from tests.e2e.conftest import own_suite

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
SIZE = 200 * MIB
# What "flat" means here: far below the artifact, whatever the process held before.
PEAK_LIMIT_MIB = 100
WARM_UP_MIB = 8
REUSE_MIB = 128
PAGE = 4096
# Longer than the wait after a transfer before the heap's free pages go back to the OS.
SETTLE_SECONDS = 1.5
REUSE_GROWTH_MIB = 8


def chunk(index: int) -> bytes:
    """One MiB of varied bytes (not compressible, not all alike), the same every time."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return seed * (MIB // len(seed))


def minor_faults(pid: int) -> int:
    """Page faults the process has taken without reading the disk: mostly first touches of
    freshly mapped memory (`minflt` in /proc/<pid>/stat)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[7])


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


def reset_peak(pid: int) -> None:
    """Starts the process's peak resident memory (VmHWM) afresh (Linux `clear_refs`, 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mib(pid: int) -> float:
    """The process's peak resident memory since the last reset, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def upload(
    stub: pb_grpc.ArtifactsServiceAsyncStub,
    tenant_id: str,
    run_id: str,
    name: str,
    mebibytes: int,
    message_bytes: int = UPLOAD_CHUNK,
) -> pb.UploadArtifactResponse:
    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(
            metadata=pb.UploadArtifactMetadata(
                run_id=run_id, step_id="big", name=name, media_type="application/x-big"
            )
        )
        # By default in messages of the worker's size (a quarter MiB), as the suite's own
        # uploader sends.
        for index in range(mebibytes):
            content = chunk(index)
            for offset in range(0, MIB, message_bytes):
                yield pb.UploadArtifactRequest(chunk=content[offset : offset + message_bytes])

    reply: pb.UploadArtifactResponse = await stub.UploadArtifact(
        messages(), metadata=(("x-aias-tenant-id", tenant_id),)
    )
    return reply


async def finished_run(http: aiohttp.ClientSession) -> tuple[Tenant, dict[str, Any]]:
    """A new tenant and a finished run of its workflow, for artifacts to belong to."""
    tenant = await new_tenant(http, "pro")
    _, secret = await new_endpoint(http, tenant)
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json={}) as response:
        accepted = await expect(response, 202)
    return tenant, await wait_for_run(http, tenant, accepted["run_id"])


@asynccontextmanager
async def artifacts_stub(stack: Stack) -> AsyncIterator[pb_grpc.ArtifactsServiceAsyncStub]:
    """The artifacts service's internal API, as the worker calls it."""
    channel = internal_channel(stack.address("artifacts"), INTERNAL_TOKEN)
    try:
        yield cast("pb_grpc.ArtifactsServiceAsyncStub", pb_grpc.ArtifactsServiceStub(channel))
    finally:
        await channel.close()


def hop_pids(stack: Stack) -> dict[str, int]:
    """The processes every artifact byte crosses."""
    return {kind: stack.instances(kind)[0].process.pid for kind in ("artifacts", "gateway")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A suite of its own, fresh: the shared one's processes carry what earlier tests left
    (caches, pools), which is not what an artifact's size costs."""
    with own_suite(
        tmp_path_factory.mktemp("large-artifact"), {"AIAS_WORKER_POLL_SECONDS": "0.5"}
    ) as running:
        yield running


async def test_200_mib_round_trip_keeps_both_processes_under_100_mib(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tenant, run = await finished_run(http)
    pids = hop_pids(stack)
    async with artifacts_stub(stack) as stub:
        # A small round trip first: what the first upload and download of a process set up
        # once (connections, statement caches, the worker threads that hash and write while
        # the next chunk arrives) is not what the size of an artifact costs.
        small = await upload(stub, tenant.id, run["id"], "small.bin", WARM_UP_MIB)
        async with http.get(
            f"/api/artifacts/{small.artifact.id}/download", headers=tenant.auth
        ) as response:
            assert len(await response.read()) == WARM_UP_MIB * MIB
        for pid in pids.values():
            reset_peak(pid)
        print(f"resident memory before, MiB: {[peak_mib(pid) for pid in pids.values()]}")
        reply = await upload(stub, tenant.id, run["id"], "big.bin", SIZE // MIB)
    artifact = reply.artifact
    expected = hashlib.sha256()
    for index in range(SIZE // MIB):
        expected.update(chunk(index))
    assert (artifact.size_bytes, artifact.sha256) == (SIZE, expected.hexdigest())
    upload_peaks = {kind: round(peak_mib(pid), 1) for kind, pid in pids.items()}
    for pid in pids.values():
        reset_peak(pid)

    received = hashlib.sha256()
    size = 0
    async with http.get(f"/api/artifacts/{artifact.id}/download", headers=tenant.auth) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(SIZE)
        async for data in response.content.iter_chunked(MIB):
            received.update(data)
            size += len(data)

    assert (size, received.hexdigest()) == (SIZE, expected.hexdigest())
    download_peaks = {kind: round(peak_mib(pid), 1) for kind, pid in pids.items()}
    print(f"peak resident memory, MiB: upload {upload_peaks}, download {download_peaks}")
    assert all(peak < PEAK_LIMIT_MIB for peak in upload_peaks.values()), upload_peaks
    assert all(peak < PEAK_LIMIT_MIB for peak in download_peaks.values()), download_peaks


async def test_a_download_reuses_its_buffers_and_gives_them_back_after(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tenant, run = await finished_run(http)
    pids = hop_pids(stack)
    async with artifacts_stub(stack) as stub:
        reply = await upload(stub, tenant.id, run["id"], "reused.bin", REUSE_MIB)
    url = f"/api/artifacts/{reply.artifact.id}/download"

    async def download() -> None:
        async with http.get(url, headers=tenant.auth) as response:
            assert len(await response.read()) == REUSE_MIB * MIB

    await download()
    await asyncio.sleep(SETTLE_SECONDS)
    resident = {kind: resident_mib(pid) for kind, pid in pids.items()}
    faults = {kind: minor_faults(pid) for kind, pid in pids.items()}
    await download()
    faults = {kind: minor_faults(pid) - faults[kind] for kind, pid in pids.items()}
    await asyncio.sleep(SETTLE_SECONDS)
    grown = {kind: round(resident_mib(pid) - resident[kind], 1) for kind, pid in pids.items()}
    print(f"page faults during the download: {faults}; resident memory after, MiB: {grown}")
    # Each message mapped afresh costs a fault per page of content in the gateway and two in
    # the artifacts service (which reads and then wraps each chunk): about three per page in
    # all. Reused buffers cost what the download touches first after the last trim, and what
    # the heap's top gives back and takes again when more messages wait than it keeps room for
    # (the gateway's share grows on a busy machine: up to 0.3 per page seen).
    pages = REUSE_MIB * MIB // PAGE
    assert sum(faults.values()) < pages, (pages, faults)
    assert all(mib < REUSE_GROWTH_MIB for mib in grown.values()), grown


async def test_an_upload_in_the_largest_messages_reuses_its_buffers(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tenant, run = await finished_run(http)
    pid = hop_pids(stack)["artifacts"]
    async with artifacts_stub(stack) as stub:
        await upload(stub, tenant.id, run["id"], "first.bin", REUSE_MIB, MAX_CHUNK_BYTES)
        await asyncio.sleep(SETTLE_SECONDS)
        before = minor_faults(pid)
        # Content one MiB longer: new to the store, so it is hashed and written in full.
        await upload(stub, tenant.id, run["id"], "second.bin", REUSE_MIB + 1, MAX_CHUNK_BYTES)
        faults = minor_faults(pid) - before
    print(f"page faults of the artifacts service during the upload: {faults}")
    # A message mapped afresh costs a fault per page of its content, twice over when it was
    # also parsed into a copy: 2.3 faults per page were seen so. Messages from the heap's
    # reused room cost about 0.1 per page.
    pages = (REUSE_MIB + 1) * MIB // PAGE
    assert faults < pages // 2, (pages, faults)
