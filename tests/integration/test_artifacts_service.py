"""The artifacts service over real gRPC, against a real PostgreSQL, on both blob backends (a
directory, and a bucket of a local S3-compatible server)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import cast

import grpc
import pytest
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine
from aias.core.entitlements import EntitlementsCache, UsageClient
from aias.core.localdb import LocalDatabase
from aias.core.tickets import run_ticket, ticket_key
from aias.services.artifacts.blobstore import BlobStore
from aias.services.artifacts.domain import (
    DEFAULT_INLINE_BYTES,
    DOWNLOAD_CHUNK_BYTES,
    MAX_STORE_BYTES,
)
from aias.services.artifacts.main import ArtifactsSettings, build_server, build_store
from aias.services.artifacts.metrics import ArtifactMetrics
from aias.services.artifacts.quota import DEFAULT_BLOCK_BYTES
from aias.services.artifacts.runs import RunOwners
from aias.services.artifacts.service import ArtifactsService
from aias.services.artifacts.sweeper import SweepConfig, Sweeper, SweepMetrics
from aias.services.execution import main as execution_main
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running
from tests.s3_server import new_bucket, s3_settings
from tests.stored_blobs import blob_digests, read_blob, temporaries

KIB = 1024
MIB = 1024 * KIB


@dataclass
class Served:
    stub: pb_grpc.ArtifactsServiceAsyncStub
    # The tests' own handle on the storage the server uses, to look at and remove what it holds.
    store: BlobStore
    tenancy: Tenancy
    db: Database
    sweeper: Sweeper
    sweeper_registry: CollectorRegistry
    # What the server was built from, for a test that builds another with other settings.
    settings: ArtifactsSettings
    # The stub's channel, for calls that send bytes no generated class would write.
    channel: grpc.aio.Channel

    async def new_tenant(self, plan: str = "free") -> uuid.UUID:
        return await self.tenancy.new_tenant(plan)

    async def new_workflow(self, tenant: uuid.UUID) -> uuid.UUID:
        workflow = uuid.uuid4()
        async with self.db.tenant(tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.workflows (id, tenant_id, name, enabled, "
                    "current_version) VALUES (:w, :t, 'wf', true, 1)"
                ),
                {"w": workflow, "t": tenant},
            )
        return workflow

    async def new_run(self, tenant: uuid.UUID, workflow: uuid.UUID | None = None) -> uuid.UUID:
        """A finished run of a one-step workflow (a new one unless given), as execution stores
        it."""
        workflow = workflow or await self.new_workflow(tenant)
        run = uuid.uuid4()
        async with self.db.tenant(tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) VALUES (:r, :t, :w, 1, "
                    "'succeeded', 1, '\\x7b7d', 'application/json')"
                ),
                {"r": run, "t": tenant, "w": workflow},
            )
        return run

    async def storage_used(self, tenant: uuid.UUID) -> int:
        """The tenant's artifact storage usage as tenancy counts it."""
        reply = await self.tenancy.stub.GetCurrentTenant(
            tenancy_pb.GetCurrentTenantRequest(), metadata=as_tenant(tenant)
        )
        return int(reply.usage.artifact_storage_bytes)

    async def blob_rows(self, tenant: uuid.UUID) -> dict[str, int]:
        """The tenant's blob rows: digest -> how many artifacts name it."""
        async with self.db.tenant(tenant) as session:
            rows = await session.execute(text("SELECT sha256, refcount FROM artifacts.blobs"))
        return {row.sha256: row.refcount for row in rows}

    def blobs_freed(self) -> float:
        """Contents the tests' sweeper has deleted, as its metric counts them."""
        return self.sweeper_registry.get_sample_value("aias_artifact_blobs_freed_total") or 0.0

    async def blob_files(self, tenant: uuid.UUID) -> list[str]:
        """The digests of the tenant's blobs in storage."""
        return await blob_digests(self.store, tenant)

    async def stored(self, tenant: uuid.UUID) -> list[str]:
        """Everything the storage holds for the tenant: blobs and uploads' temporary data."""
        return [*await self.blob_files(tenant), *await temporaries(self.store, tenant)]


@pytest.fixture(scope="module", params=["filesystem", "s3"])
async def served(
    request: pytest.FixtureRequest,
    database: LocalDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    tenancy: Tenancy,
    s3_endpoint: str,
) -> AsyncIterator[Served]:
    """The real server, built by the production factory, on an ephemeral port, storing blobs
    in a directory or in a bucket of its own; every test makes its own tenants in it."""
    blob_root = tmp_path_factory.mktemp("artifacts")
    s3 = (
        s3_settings(s3_endpoint, await new_bucket(s3_endpoint), "blobs")
        if request.param == "s3"
        else None
    )
    execution = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=0.0,
            max_attempts=1,
        )
    )
    db = Database(create_engine(database.app_url, name="tests", max_connections=4))
    async with running(execution) as execution_addr:
        settings = ArtifactsSettings(
            server=server_settings("artifacts"),
            database_url=database.app_url,
            blob_root=blob_root,
            tenancy_addr=tenancy.address,
            execution_addr=execution_addr,
            entitlements_ttl=0.0,
            # The server's own sweeper expires artifacts often, alongside the tests' uploads and
            # deletions, but frees no blob: tests that free blobs run a sweep themselves.
            sweep=SweepConfig(interval_seconds=0.2, blob_grace=timedelta(hours=1)),
            s3=s3,
            # Storage a block left over goes back as each tenant's last upload ends, so the
            # tests read usage at rest right after their uploads (the linger has its own test).
            storage_linger_seconds=0.0,
        )
        store = build_store(settings)
        await store.prepare()
        async with running(await build_server(settings)) as address:
            channel = internal_channel(address, INTERNAL_TOKEN)
            tenancy_channel = internal_channel(tenancy.address, INTERNAL_TOKEN)
            execution_channel = internal_channel(execution_addr, INTERNAL_TOKEN)
            # A second replica's sweeper, with a small batch, so a sweep can be run on demand.
            replica = ArtifactsService(
                db,
                store,
                EntitlementsCache(tenancy_channel, 0.0),
                UsageClient(tenancy_channel),
                RunOwners(execution_channel, ticket_key(INTERNAL_TOKEN)),
                ArtifactMetrics(CollectorRegistry()),
            )
            registry = CollectorRegistry()
            sweeper = Sweeper(
                replica, SweepConfig(batch=2, blob_grace=timedelta(0)), SweepMetrics(registry)
            )
            # The stub's overloads cannot tell an aio channel from a sync one without grpc stubs.
            stub = cast("pb_grpc.ArtifactsServiceAsyncStub", pb_grpc.ArtifactsServiceStub(channel))
            yield Served(stub, store, tenancy, db, sweeper, registry, settings, channel)
            for opened in (channel, tenancy_channel, execution_channel):
                await opened.close()
    await db.close()
    await store.close()


def as_tenant(tenant_id: uuid.UUID) -> tuple[tuple[str, str], ...]:
    return (("x-aias-tenant-id", str(tenant_id)),)


def reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


def metadata_message(
    run_id: uuid.UUID | str,
    name: str,
    *,
    step_id: str = "save",
    media_type: str = "application/json",
    retention_days: int = 0,
    workflow_id: str = "",
) -> pb.UploadArtifactRequest:
    return pb.UploadArtifactRequest(
        metadata=pb.UploadArtifactMetadata(
            run_id=str(run_id),
            workflow_id=workflow_id,
            step_id=step_id,
            name=name,
            media_type=media_type,
            retention_days=retention_days,
        )
    )


async def send(
    served: Served, tenant_id: uuid.UUID, messages: Sequence[pb.UploadArtifactRequest]
) -> pb.Artifact:
    async def stream() -> AsyncIterator[pb.UploadArtifactRequest]:
        for message in messages:
            yield message

    response: pb.UploadArtifactResponse = await served.stub.UploadArtifact(
        stream(), metadata=as_tenant(tenant_id)
    )
    return response.artifact


async def upload(
    served: Served,
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    name: str,
    chunks: Sequence[bytes],
    *,
    media_type: str = "application/json",
    retention_days: int = 0,
    workflow_id: str = "",
) -> pb.Artifact:
    first = metadata_message(
        run_id, name, media_type=media_type, retention_days=retention_days, workflow_id=workflow_id
    )
    return await send(
        served, tenant_id, [first, *(pb.UploadArtifactRequest(chunk=c) for c in chunks)]
    )


async def store(
    served: Served, tenant_id: uuid.UUID, run_id: uuid.UUID, name: str, content: bytes
) -> pb.Artifact:
    """StoreArtifact: the whole content in one message."""
    request = pb.StoreArtifactRequest(
        metadata=metadata_message(run_id, name, media_type="application/octet-stream").metadata,
        content=content,
    )
    response: pb.StoreArtifactResponse = await served.stub.StoreArtifact(
        request, metadata=as_tenant(tenant_id)
    )
    return response.artifact


async def download(
    served: Served, tenant_id: uuid.UUID, artifact_id: str
) -> tuple[dict[str, str], list[httpbody_pb2.HttpBody]]:
    call = served.stub.DownloadArtifact(
        pb.DownloadArtifactRequest(artifact_id=artifact_id), metadata=as_tenant(tenant_id)
    )
    messages = [message async for message in call]
    headers = dict(await call.initial_metadata())
    return headers, messages


async def eventually(condition: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Polls for server-side work in storage, which the client cannot observe through the RPC."""
    for _ in range(250):
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out after 5 s waiting for {condition}")


async def test_upload_then_download_returns_the_exact_bytes(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    content = b'{"order":42,"total":17.5}'

    artifact = await upload(
        served, tenant, run, "summary.json", [content[:5], content[5:12], content[12:]]
    )

    assert uuid.UUID(artifact.id)
    assert (artifact.run_id, artifact.step_id, artifact.name) == (str(run), "save", "summary.json")
    assert artifact.media_type == "application/json"
    assert artifact.size_bytes == len(content)
    assert artifact.sha256 == hashlib.sha256(content).hexdigest()
    assert artifact.HasField("create_time")
    # The free plan keeps artifacts 7 days.
    lifetime = artifact.expire_time.ToDatetime() - artifact.create_time.ToDatetime()
    assert lifetime == timedelta(days=7)

    got: pb.GetArtifactResponse = await served.stub.GetArtifact(
        pb.GetArtifactRequest(artifact_id=artifact.id), metadata=as_tenant(tenant)
    )
    assert got.artifact == artifact

    headers, messages = await download(served, tenant, artifact.id)
    assert b"".join(m.data for m in messages) == content
    assert messages[0].content_type == "application/json"
    assert headers["x-http-header-content-length"] == str(len(content))
    assert headers["x-http-header-etag"] == f'"{artifact.sha256}"'
    assert headers["x-http-header-content-disposition"] == 'attachment; filename="summary.json"'


@pytest.mark.parametrize(
    ("plan", "requested", "kept"),
    [
        ("enterprise", 3, timedelta(days=3)),
        ("enterprise", 0, None),
        ("free", 3, timedelta(days=3)),
        ("free", 30, timedelta(days=7)),
        ("pro", 0, timedelta(days=90)),
    ],
)
async def test_retention_is_what_the_upload_asks_at_most_the_plans(
    served: Served, plan: str, requested: int, kept: timedelta | None
) -> None:
    tenant = await served.new_tenant(plan)

    artifact = await upload(
        served,
        tenant,
        await served.new_run(tenant),
        "out.txt",
        [b"hi"],
        media_type="text/plain; charset=utf-8",
        retention_days=requested,
    )

    if kept is None:
        assert not artifact.HasField("expire_time")
    else:
        lifetime = artifact.expire_time.ToDatetime() - artifact.create_time.ToDatetime()
        assert lifetime == kept


async def test_empty_artifact_downloads_with_its_content_type(served: Served) -> None:
    tenant = await served.new_tenant()

    artifact = await upload(
        served,
        tenant,
        await served.new_run(tenant),
        "empty.csv",
        [],
        media_type="text/csv; charset=utf-8",
    )

    assert artifact.size_bytes == 0
    assert artifact.sha256 == hashlib.sha256(b"").hexdigest()
    headers, messages = await download(served, tenant, artifact.id)
    assert [(m.content_type, m.data) for m in messages] == [("text/csv; charset=utf-8", b"")]
    assert headers["x-http-header-content-length"] == "0"


async def test_non_ascii_name_gets_an_encoded_filename(served: Served) -> None:
    tenant = await served.new_tenant()

    artifact = await upload(
        served,
        tenant,
        await served.new_run(tenant),
        'résumé "v2".txt',
        [b"x"],
        media_type="text/plain; charset=utf-8",
    )

    headers, _ = await download(served, tenant, artifact.id)
    assert headers["x-http-header-content-disposition"] == (
        "attachment; filename=\"r_sum_ _v2_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.txt"
    )


async def test_multi_mebibyte_upload_streams_back_in_bounded_chunks(served: Served) -> None:
    tenant = await served.new_tenant()
    content = os.urandom(5 * MIB + 123)
    chunks = [content[i : i + 256 * KIB] for i in range(0, len(content), 256 * KIB)]

    artifact = await upload(
        served,
        tenant,
        await served.new_run(tenant),
        "big.bin",
        chunks,
        media_type="application/octet-stream",
    )

    digest = hashlib.sha256(content).hexdigest()
    assert (artifact.size_bytes, artifact.sha256) == (len(content), digest)
    headers, messages = await download(served, tenant, artifact.id)
    assert b"".join(m.data for m in messages) == content
    assert max(len(m.data) for m in messages) <= DOWNLOAD_CHUNK_BYTES
    assert len(messages) >= len(content) // DOWNLOAD_CHUNK_BYTES
    assert headers["x-http-header-content-length"] == str(len(content))
    assert await read_blob(served.store, tenant, digest) == content


async def test_upload_must_start_with_metadata(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    with pytest.raises(grpc.aio.AioRpcError) as chunk_first:
        await send(served, tenant, [pb.UploadArtifactRequest(chunk=b"x")])
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await send(served, tenant, [])
    with pytest.raises(grpc.aio.AioRpcError) as metadata_twice:
        await send(served, tenant, [metadata_message(run, "a.json")] * 2)

    for caught in (chunk_first, nothing):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(caught.value) == "UPLOAD_METADATA_FIRST"
    assert metadata_twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(metadata_twice.value) == "UPLOAD_CHUNK_EXPECTED"
    assert await served.stored(tenant) == []


@pytest.mark.parametrize(
    "malformed",
    [
        b"\x12\x05abc",  # a chunk shorter than its length says
        b"\x12",  # a chunk without its length
        b"\x0a\x02\xff\xff",  # metadata that is no message
    ],
)
async def test_a_malformed_upload_message_ends_the_upload_and_stores_nothing(
    served: Served, malformed: bytes
) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    # The upload's messages as raw wire bytes: the metadata, a good chunk, then the bad one.
    upload_raw = served.channel.stream_unary(
        "/aias.artifacts.v1.ArtifactsService/UploadArtifact",
        request_serializer=None,
        response_deserializer=pb.UploadArtifactResponse.FromString,
    )
    wire = [
        metadata_message(run, "a.bin").SerializeToString(),
        pb.UploadArtifactRequest(chunk=b"good").SerializeToString(),
        malformed,
    ]

    async def messages() -> AsyncIterator[bytes]:
        for message in wire:
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload_raw(messages(), metadata=as_tenant(tenant))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "MALFORMED_MESSAGE"
    assert await served.stored(tenant) == []
    # The service goes on serving.
    await upload(served, tenant, run, "b.bin", [b"fine"])


@pytest.mark.parametrize(
    ("field", "value", "expected_reason"),
    [
        ("run_id", "not-a-uuid", "INVALID_ID"),
        ("name", "a/b.json", "INVALID_NAME"),
        ("name", "a\x00b", "INVALID_NAME"),
        ("name", "", "INVALID_NAME"),
        ("name", "x" * 256, "INVALID_NAME"),
        ("media_type", "", "INVALID_MEDIA_TYPE"),
        ("media_type", "json", "INVALID_MEDIA_TYPE"),
        ("step_id", "", "INVALID_STEP_ID"),
        ("retention_days", -1, "INVALID_RETENTION"),
    ],
)
async def test_bad_metadata_is_refused(
    served: Served, field: str, value: str | int, expected_reason: str
) -> None:
    message = metadata_message(uuid.uuid4(), "a.json")
    setattr(message.metadata, field, value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(served, uuid.uuid4(), [message, pb.UploadArtifactRequest(chunk=b"{}")])

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == expected_reason


async def test_oversized_chunk_is_refused_and_leaves_nothing(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, tenant, run, "a.bin", [b"a" * 1000, b"b" * (MIB + 1)])

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "CHUNK_TOO_LARGE"
    assert await served.stored(tenant) == []
    listed: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(), metadata=as_tenant(tenant)
    )
    assert list(listed.artifacts) == []


async def test_reupload_with_same_content_returns_the_first_artifact(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    first = await upload(served, tenant, run, "out.json", [b"[1,2,3]"])
    again = await upload(served, tenant, run, "out.json", [b"[1,", b"2,3]"])

    assert again == first
    assert await served.blob_files(tenant) == [first.sha256]


async def test_identical_content_under_two_names_is_stored_once(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    a = await upload(served, tenant, run, "a.json", [b"{}"])
    b = await upload(served, tenant, run, "b.json", [b"{}"])

    assert a.id != b.id
    assert a.sha256 == b.sha256
    assert await served.blob_files(tenant) == [a.sha256]


async def test_reupload_with_different_content_is_refused(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    first = await upload(served, tenant, run, "out.json", [b"[1,2,3]"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, tenant, run, "out.json", [b"[4,5,6]"])

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(caught.value) == "ARTIFACT_EXISTS"
    _, messages = await download(served, tenant, first.id)
    assert b"".join(m.data for m in messages) == b"[1,2,3]"


async def test_concurrent_identical_uploads_make_one_artifact(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    results = await asyncio.gather(
        *(upload(served, tenant, run, "same.json", [b'{"a":1}']) for _ in range(5))
    )

    assert len({artifact.id for artifact in results}) == 1


async def test_list_by_run_pages_newest_first(served: Served) -> None:
    tenant = await served.new_tenant()
    run, other_run = await served.new_run(tenant), await served.new_run(tenant)
    uploaded = [
        await upload(served, tenant, run, f"part-{i}.json", [str(i).encode()]) for i in range(5)
    ]
    other = await upload(served, tenant, other_run, "elsewhere.json", [b"0"])

    pages: list[list[str]] = []
    token = ""
    while True:
        page: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
            pb.ListArtifactsRequest(run_id=str(run), page_size=2, page_token=token),
            metadata=as_tenant(tenant),
        )
        pages.append([artifact.id for artifact in page.artifacts])
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [a.id for a in reversed(uploaded)]
    everything: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(), metadata=as_tenant(tenant)
    )
    assert [a.id for a in everything.artifacts] == [other.id, *(a.id for a in reversed(uploaded))]
    assert everything.next_page_token == ""


async def test_list_refuses_a_foreign_or_garbled_page_token(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    for i in range(2):
        await upload(served, tenant, run, f"{i}.json", [b"1"])
    first: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run), page_size=1), metadata=as_tenant(tenant)
    )
    assert first.next_page_token

    for request in (
        pb.ListArtifactsRequest(page_token="garbage!"),
        pb.ListArtifactsRequest(run_id=str(uuid.uuid4()), page_token=first.next_page_token),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.ListArtifacts(request, metadata=as_tenant(tenant))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(caught.value) == "INVALID_PAGE_TOKEN"


async def test_page_size_defaults_caps_and_refuses_negatives(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    for i in range(3):
        await upload(served, tenant, run, f"{i}.json", [b"1"])

    default: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run)), metadata=as_tenant(tenant)
    )
    capped: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run), page_size=1000), metadata=as_tenant(tenant)
    )
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await served.stub.ListArtifacts(
            pb.ListArtifactsRequest(page_size=-1), metadata=as_tenant(tenant)
        )

    assert (len(default.artifacts), default.next_page_token) == (3, "")
    assert (len(capped.artifacts), capped.next_page_token) == (3, "")
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(negative.value) == "INVALID_PAGE_SIZE"


async def test_another_tenant_cannot_see_the_artifact(served: Served) -> None:
    tenant_a, tenant_b = await served.new_tenant(), await served.new_tenant()
    run = await served.new_run(tenant_a)
    artifact = await upload(served, tenant_a, run, "secret.json", [b'{"k":"v"}'])

    with pytest.raises(grpc.aio.AioRpcError) as got:
        await served.stub.GetArtifact(
            pb.GetArtifactRequest(artifact_id=artifact.id), metadata=as_tenant(tenant_b)
        )
    with pytest.raises(grpc.aio.AioRpcError) as downloaded:
        await download(served, tenant_b, artifact.id)
    by_run: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run)), metadata=as_tenant(tenant_b)
    )
    everything: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(), metadata=as_tenant(tenant_b)
    )

    for caught in (got, downloaded):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(caught.value) == "ARTIFACT_NOT_FOUND"
    assert list(by_run.artifacts) == []
    assert list(everything.artifacts) == []


async def test_malformed_ids_and_missing_tenant_are_refused(served: Served) -> None:
    tenant = await served.new_tenant()

    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await served.stub.GetArtifact(
            pb.GetArtifactRequest(artifact_id="nope"), metadata=as_tenant(tenant)
        )
    with pytest.raises(grpc.aio.AioRpcError) as bad_run:
        await served.stub.ListArtifacts(
            pb.ListArtifactsRequest(run_id="nope"), metadata=as_tenant(tenant)
        )
    with pytest.raises(grpc.aio.AioRpcError) as no_tenant:
        await served.stub.GetArtifact(pb.GetArtifactRequest(artifact_id=str(uuid.uuid4())))

    for caught in (bad_id, bad_run):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(caught.value) == "INVALID_ID"
    assert no_tenant.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(no_tenant.value) == "TENANT_REQUIRED"


async def test_missing_blob_is_reported_not_streamed(served: Served) -> None:
    tenant = await served.new_tenant()
    artifact = await upload(served, tenant, await served.new_run(tenant), "gone.json", [b"{}"])
    await served.store.delete(tenant, artifact.sha256)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await download(served, tenant, artifact.id)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(caught.value) == "BLOB_MISSING"


async def test_cancelled_upload_leaves_no_row_blob_or_temp_file(
    served: Served, app_db: Database
) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield metadata_message(run, "partial.bin")
        # More than one S3 part, so that store has started a multipart upload too.
        for _ in range(6 * MIB // (256 * KIB)):
            yield pb.UploadArtifactRequest(chunk=os.urandom(256 * KIB))
        await release.wait()

    async def uploading() -> bool:
        return bool(await temporaries(served.store, tenant))

    async def discarded() -> bool:
        return await served.stored(tenant) == []

    call = served.stub.UploadArtifact(stalled(), metadata=as_tenant(tenant))
    try:
        await eventually("the server to write temporary data", uploading)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        release.set()

    await eventually("the server to discard the upload", discarded)
    async with app_db.tenant(tenant) as session:
        rows = await session.scalar(
            text("SELECT count(*) FROM artifacts.artifacts WHERE run_id = :run"), {"run": run}
        )
    assert rows == 0


async def test_storage_quota_counts_new_content_once_and_stores_nothing_over_it(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    await served.tenancy.set_limits(tenant, artifact_storage_bytes=10)
    run = await served.new_run(tenant)
    await upload(served, tenant, run, "a.bin", [b"12345678"], media_type="application/octet-stream")
    # The same content again costs nothing: it is stored once.
    await upload(served, tenant, run, "b.bin", [b"12345678"], media_type="application/octet-stream")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, tenant, run, "c.bin", [b"abcdefgh"], media_type="text/plain")

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(caught.value) == "QUOTA_EXCEEDED"
    assert "artifact_storage_bytes=10" in (caught.value.details() or "")
    listed = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run)), metadata=as_tenant(tenant)
    )
    assert sorted(a.name for a in listed.artifacts) == ["a.bin", "b.bin"]
    assert await served.stored(tenant) == [hashlib.sha256(b"12345678").hexdigest()]


async def test_concurrent_uploads_do_not_overshoot_the_storage_quota(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    await served.tenancy.set_limits(tenant, artifact_storage_bytes=10)
    run = await served.new_run(tenant)
    results = await asyncio.gather(
        *(
            upload(served, tenant, run, f"{i}.bin", [f"{i:04d}".encode()], media_type="text/plain")
            for i in range(6)
        ),
        return_exceptions=True,
    )
    stored = [r for r in results if isinstance(r, pb.Artifact)]
    assert len(stored) == 2
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and reason(r) == "QUOTA_EXCEEDED"
        for r in results
        if r not in stored
    )


async def test_overlapping_uploads_reserve_in_blocks_yet_fill_the_quota_exactly(
    served: Served,
) -> None:
    # A limit above one block: the first overlapping uploads get blocks, the last ones exact
    # grants, and the uploads past the limit are refused.
    size = 200 * KIB
    limit = DEFAULT_BLOCK_BYTES + MIB
    tenant = await served.new_tenant("enterprise")
    await served.tenancy.set_limits(tenant, artifact_storage_bytes=limit)
    run = await served.new_run(tenant)
    results = await asyncio.gather(
        *(store(served, tenant, run, f"{i}.bin", os.urandom(size)) for i in range(30)),
        return_exceptions=True,
    )
    stored = [r for r in results if isinstance(r, pb.Artifact)]
    assert len(stored) == limit // size
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and reason(r) == "QUOTA_EXCEEDED"
        for r in results
        if r not in stored
    )
    # What the burst held beyond its uploads went back when it ended.
    assert await served.storage_used(tenant) == len(stored) * size


async def test_uploads_one_after_another_hold_a_block_until_the_linger_ends(
    served: Served,
) -> None:
    # A workflow's artifact step stores one artifact at a time: with a linger, the uploads after
    # the first draw on one block instead of a reservation at tenancy each.
    settings = replace(
        served.settings, server=server_settings("artifacts"), storage_linger_seconds=0.3
    )
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    size = 10 * KIB
    reserved_before = served.tenancy.handled("ReserveUsage")
    async with running(await build_server(settings)) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        lingering = replace(
            served,
            stub=cast("pb_grpc.ArtifactsServiceAsyncStub", pb_grpc.ArtifactsServiceStub(channel)),
        )
        for index in range(5):
            await store(lingering, tenant, run, f"{index}.bin", os.urandom(size))
        assert served.tenancy.handled("ReserveUsage") - reserved_before == 2
        # The block's remainder is held while uploads may follow, then given back.
        assert await served.storage_used(tenant) == DEFAULT_BLOCK_BYTES + 2 * size
        for _ in range(50):
            if await served.storage_used(tenant) == 5 * size:
                break
            await asyncio.sleep(0.1)
        assert await served.storage_used(tenant) == 5 * size

        for index in range(5, 7):
            await store(lingering, tenant, run, f"{index}.bin", os.urandom(size))
        assert await served.storage_used(tenant) > 7 * size
        await channel.close()
    # A server that stops gives back what it held at once.
    assert await served.storage_used(tenant) == 7 * size


async def test_store_artifact_is_an_upload_in_one_message(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    content = b'{"order": 7}'

    stored = await store(served, tenant, run, "out.json", content)
    # The same artifact streamed again is the same one.
    streamed = await upload(served, tenant, run, "out.json", [content])

    assert stored.id == streamed.id
    assert (stored.size_bytes, stored.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    _headers, body = await download(served, tenant, stored.id)
    assert b"".join(message.data for message in body) == content
    assert await served.storage_used(tenant) == len(content)


async def test_content_in_one_message_is_kept_in_its_row_not_the_store(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = b'{"order": 8, "lines": "' + b"x" * 2000 + b'"}'
    digest = hashlib.sha256(content).hexdigest()

    stored = await store(served, tenant, run, "out.json", content)

    assert await served.stored(tenant) == []
    assert await served.blob_rows(tenant) == {digest: 1}
    assert await served.storage_used(tenant) == len(content)
    _headers, body = await download(served, tenant, stored.id)
    assert b"".join(message.data for message in body) == content
    window = served.stub.DownloadArtifact(
        pb.DownloadArtifactRequest(artifact_id=stored.id, offset=3, length=1500),
        metadata=as_tenant(tenant),
    )
    assert b"".join([message.data async for message in window]) == content[3:1503]


async def test_content_over_the_inline_size_goes_to_the_blob_store(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(DEFAULT_INLINE_BYTES + 1)

    stored = await store(served, tenant, run, "big.bin", content)

    assert await served.blob_files(tenant) == [stored.sha256]
    _headers, body = await download(served, tenant, stored.id)
    assert b"".join(message.data for message in body) == content


async def test_identical_content_in_one_message_at_once_is_one_row_counted_once(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(1000)

    stored = await asyncio.gather(
        *(store(served, tenant, run, f"{i}.bin", content) for i in range(8))
    )

    assert await served.blob_rows(tenant) == {hashlib.sha256(content).hexdigest(): 8}
    assert await served.storage_used(tenant) == len(content)
    for artifact in stored:
        _headers, body = await download(served, tenant, artifact.id)
        assert b"".join(message.data for message in body) == content


async def test_a_corrupt_blob_kept_in_its_row_is_data_loss(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    content = b"0123456789" * 50
    stored = await store(served, tenant, run, "digits.txt", content)
    async with served.db.tenant(tenant) as session:
        await session.execute(
            text("UPDATE artifacts.blobs SET content = :c WHERE sha256 = :d"),
            {"c": content[::-1], "d": stored.sha256},
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await download(served, tenant, stored.id)

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert reason(caught.value) == "BLOB_CORRUPT"


async def test_a_blob_kept_in_its_row_goes_with_its_last_artifact(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(700)
    first = await store(served, tenant, run, "a.bin", content)
    # The same content streamed: its file joins the row's copy, and goes with it.
    second = await upload(served, tenant, run, "b.bin", [content])

    await delete(served, tenant, first.id, "admin")
    await delete(served, tenant, second.id, "admin")
    assert await served.storage_used(tenant) == 0
    await served.sweeper.sweep()

    assert await served.blob_rows(tenant) == {}
    assert await served.stored(tenant) == []


async def test_store_artifact_refuses_content_for_a_stream(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store(served, tenant, run, "big.bin", bytes(MAX_STORE_BYTES + 1))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "CONTENT_TOO_LARGE"
    assert await served.stored(tenant) == []


async def test_upload_for_another_tenants_run_is_refused(served: Served) -> None:
    owner, intruder = await served.new_tenant(), await served.new_tenant()
    run = await served.new_run(owner)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, intruder, run, "x.json", [b"{}"])

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) == "RUN_NOT_FOUND"
    listed = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(), metadata=as_tenant(intruder)
    )
    assert list(listed.artifacts) == []


async def test_a_burst_of_uploads_checks_every_run_against_its_tenant(served: Served) -> None:
    # Overlapping uploads of several tenants' runs and of no run: each gets its own answer.
    owner, other = await served.new_tenant(), await served.new_tenant()
    workflow = await served.new_workflow(owner)
    runs = [await served.new_run(owner, workflow) for _ in range(12)]
    foreign = [await served.new_run(other) for _ in range(3)]
    missing = [uuid.uuid4() for _ in range(3)]
    burst = [*runs, *foreign, *missing]
    results = await asyncio.gather(
        *(store(served, owner, run, "out.json", str(run).encode()) for run in burst),
        return_exceptions=True,
    )

    stored = results[: len(runs)]
    assert all(isinstance(r, pb.Artifact) and r.workflow_id == str(workflow) for r in stored)
    refused = results[len(runs) :]
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and reason(r) == "RUN_NOT_FOUND" for r in refused
    )
    listed = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(page_size=100), metadata=as_tenant(owner)
    )
    assert sorted(a.run_id for a in listed.artifacts) == sorted(str(r) for r in runs)


async def store_with_ticket(
    served: Served,
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    workflow_id: uuid.UUID | None,
    ticket: str,
    content: bytes = b"{}",
) -> pb.Artifact:
    metadata = metadata_message(
        run_id, "out.json", workflow_id=str(workflow_id) if workflow_id else ""
    ).metadata
    metadata.run_ticket = ticket
    response: pb.StoreArtifactResponse = await served.stub.StoreArtifact(
        pb.StoreArtifactRequest(metadata=metadata, content=content),
        metadata=as_tenant(tenant_id),
    )
    return response.artifact


async def test_a_run_ticket_is_execution_s_word_for_the_run(served: Served) -> None:
    # The run is not in execution's tables: with a ticket signed under the internal token's
    # key the service takes the ticket's word and does not ask.
    tenant = await served.new_tenant()
    run, workflow = uuid.uuid4(), uuid.uuid4()
    ticket = run_ticket(ticket_key(INTERNAL_TOKEN), tenant, run, workflow)

    stored = await store_with_ticket(served, tenant, run, workflow, ticket)

    assert (stored.run_id, stored.workflow_id) == (str(run), str(workflow))


@pytest.mark.parametrize("wrong", ["tenant", "run", "workflow", "key", "garbage"])
async def test_a_run_ticket_for_anything_else_is_refused(served: Served, wrong: str) -> None:
    owner, intruder = await served.new_tenant(), await served.new_tenant()
    workflow = await served.new_workflow(owner)
    run = await served.new_run(owner, workflow)
    key = ticket_key(INTERNAL_TOKEN)
    tenant, named_run, named_workflow = intruder if wrong == "tenant" else owner, run, workflow
    ticket = run_ticket(key, owner, run, workflow)
    if wrong == "run":
        named_run = await served.new_run(owner, workflow)
    elif wrong == "workflow":
        named_workflow = await served.new_workflow(owner)
    elif wrong == "key":
        ticket = run_ticket(ticket_key("another-token"), owner, run, workflow)
    elif wrong == "garbage":
        ticket = "v1." + "\u00e9" * 500

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store_with_ticket(served, tenant, named_run, named_workflow, ticket)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "INVALID_RUN_TICKET"
    assert len(caught.value.details() or "") < 300
    for who in (owner, intruder):
        listed = await served.stub.ListArtifacts(pb.ListArtifactsRequest(), metadata=as_tenant(who))
        assert list(listed.artifacts) == []


async def test_a_run_ticket_without_the_workflow_is_a_bad_request(served: Served) -> None:
    tenant = await served.new_tenant()
    run = await served.new_run(tenant)
    ticket = run_ticket(ticket_key(INTERNAL_TOKEN), tenant, run, uuid.uuid4())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store_with_ticket(served, tenant, run, None, ticket)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "WORKFLOW_ID_REQUIRED"


def as_role(tenant_id: uuid.UUID, role: str) -> tuple[tuple[str, str], ...]:
    """What the gateway sends for a tenant's API key with this role."""
    return (*as_tenant(tenant_id), ("x-aias-role", role))


async def delete(served: Served, tenant_id: uuid.UUID, artifact_id: str, role: str) -> None:
    await served.stub.DeleteArtifact(
        pb.DeleteArtifactRequest(artifact_id=artifact_id), metadata=as_role(tenant_id, role)
    )


async def get(served: Served, tenant_id: uuid.UUID, artifact_id: str) -> pb.Artifact:
    response: pb.GetArtifactResponse = await served.stub.GetArtifact(
        pb.GetArtifactRequest(artifact_id=artifact_id), metadata=as_tenant(tenant_id)
    )
    return response.artifact


async def expire(served: Served, tenant_id: uuid.UUID, *artifact_ids: str) -> None:
    """Moves artifacts' expiry into the past, as if their retention had run out."""
    async with served.db.tenant(tenant_id) as session:
        await session.execute(
            text(
                "UPDATE artifacts.artifacts SET expire_time = now() - interval '1 second' "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": [uuid.UUID(a) for a in artifact_ids]},
        )


async def test_same_content_twice_is_one_blob_named_twice_and_counted_once(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(3000)
    digest = hashlib.sha256(content).hexdigest()

    await upload(served, tenant, run, "a.bin", [content], media_type="application/octet-stream")
    await upload(served, tenant, run, "b.bin", [content], media_type="application/octet-stream")

    assert await served.blob_rows(tenant) == {digest: 2}
    assert await served.blob_files(tenant) == [digest]
    assert await served.storage_used(tenant) == len(content)


async def test_a_blob_stays_while_any_artifact_names_it_and_goes_with_the_last(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(2000)
    digest = hashlib.sha256(content).hexdigest()
    a = await upload(served, tenant, run, "a.bin", [content])
    b = await upload(served, tenant, run, "b.bin", [content])

    await delete(served, tenant, a.id, "admin")
    await served.sweeper.sweep()

    assert await served.blob_rows(tenant) == {digest: 1}
    assert await served.blob_files(tenant) == [digest]
    assert await served.storage_used(tenant) == len(content)
    _, messages = await download(served, tenant, b.id)
    assert b"".join(m.data for m in messages) == content

    await delete(served, tenant, b.id, "admin")
    # The bytes stop counting at once; the file goes with the next sweep.
    assert await served.storage_used(tenant) == 0
    freed_before = served.blobs_freed()
    await served.sweeper.sweep()
    # At least this one: the sweep frees what other tests left unreferenced too.
    assert served.blobs_freed() >= freed_before + 1

    assert await served.blob_rows(tenant) == {}
    assert await served.blob_files(tenant) == []
    # The same content can come back, and counts again.
    again = await upload(served, tenant, run, "c.bin", [content])
    _, messages = await download(served, tenant, again.id)
    assert b"".join(m.data for m in messages) == content
    assert await served.storage_used(tenant) == len(content)


async def test_uploads_of_content_being_swept_never_lose_it(served: Served) -> None:
    """Uploads, deletions and sweeps of one content at once: whatever interleaving, every
    artifact left can be downloaded, the count matches, and the usage is the content's once."""
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = os.urandom(5000)
    digest = hashlib.sha256(content).hexdigest()

    async def churn(i: int) -> str | None:
        # Each round names the content and lets it go again, so its count keeps touching zero.
        for round_ in range(4):
            artifact = await upload(served, tenant, run, f"{i}-{round_}.bin", [content])
            await delete(served, tenant, artifact.id, "admin")
        if i % 2:
            return None
        return str((await upload(served, tenant, run, f"{i}.bin", [content])).id)

    async def sweep_repeatedly() -> None:
        for _ in range(40):
            await served.sweeper.sweep()

    *results, _ = await asyncio.gather(*(churn(i) for i in range(12)), sweep_repeatedly())
    kept = [r for r in results if r is not None]

    assert len(kept) == 6
    assert await served.blob_rows(tenant) == {digest: 6}
    assert await served.blob_files(tenant) == [digest]
    assert await served.storage_used(tenant) == len(content)
    for artifact_id in kept:
        _, messages = await download(served, tenant, artifact_id)
        assert b"".join(m.data for m in messages) == content


async def test_retention_sweep_deletes_expired_artifacts_and_gives_storage_back(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    kept_content, shared, alone = os.urandom(100), os.urandom(200), os.urandom(400)
    kept = await upload(served, tenant, run, "kept.bin", [kept_content])
    shared_kept = await upload(served, tenant, run, "shared-kept.bin", [shared])
    doomed = [
        await upload(served, tenant, run, "shared-expired.bin", [shared]),
        *[await upload(served, tenant, run, f"alone-{i}.bin", [alone]) for i in range(3)],
    ]
    assert await served.storage_used(tenant) == 700
    await expire(served, tenant, *(a.id for a in doomed))

    # The sweeper's batch is 2: four expired artifacts take more than one.
    await served.sweeper.sweep()

    for artifact in doomed:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(served, tenant, artifact.id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await get(served, tenant, kept.id) == kept
    assert await get(served, tenant, shared_kept.id) == shared_kept
    assert await served.storage_used(tenant) == 300
    assert await served.blob_files(tenant) == sorted(
        hashlib.sha256(c).hexdigest() for c in (kept_content, shared)
    )
    assert await served.blob_rows(tenant) == {kept.sha256: 1, shared_kept.sha256: 1}


async def test_the_servers_own_sweeper_expires_artifacts(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    artifact = await upload(served, tenant, await served.new_run(tenant), "x.bin", [b"expiring"])
    await expire(served, tenant, artifact.id)

    for _ in range(250):
        if await served.storage_used(tenant) == 0:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the server's sweeper did not delete the expired artifact within 5 s")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(served, tenant, artifact.id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await served.blob_rows(tenant) == {artifact.sha256: 0}


async def test_deleting_frees_quota_for_new_content(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    await served.tenancy.set_limits(tenant, artifact_storage_bytes=10)
    run = await served.new_run(tenant)
    first = await upload(served, tenant, run, "a.bin", [b"12345678"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, tenant, run, "b.bin", [b"abcdefgh"])
    assert reason(caught.value) == "QUOTA_EXCEEDED"

    await delete(served, tenant, first.id, "admin")
    second = await upload(served, tenant, run, "b.bin", [b"abcdefgh"])

    assert second.size_bytes == 8
    assert await served.storage_used(tenant) == 8


async def test_delete_is_for_admins_of_the_artifacts_tenant(served: Served) -> None:
    tenant, stranger = await served.new_tenant(), await served.new_tenant()
    run = await served.new_run(tenant)
    artifact = await upload(served, tenant, run, "a.json", [b"{}"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(served, tenant, artifact.id, "member")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "ROLE_REQUIRED"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(served, stranger, artifact.id, "owner")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await get(served, tenant, artifact.id) == artifact

    await delete(served, tenant, artifact.id, "admin")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(served, tenant, artifact.id, "owner")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) == "ARTIFACT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(served, tenant, "not-a-uuid", "admin")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_workflow_and_run_and_pages(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    workflow, other_workflow = await served.new_workflow(tenant), await served.new_workflow(tenant)
    runs = [await served.new_run(tenant, workflow) for _ in range(2)]
    other_run = await served.new_run(tenant, other_workflow)
    ours = [
        await upload(served, tenant, runs[i % 2], f"{i}.json", [str(i).encode()]) for i in range(5)
    ]
    await upload(served, tenant, other_run, "other.json", [b"0"])

    async def pages(request: pb.ListArtifactsRequest) -> list[list[str]]:
        found: list[list[str]] = []
        while True:
            reply: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
                request, metadata=as_tenant(tenant)
            )
            found.append([a.id for a in reply.artifacts])
            if not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token

    by_workflow = await pages(pb.ListArtifactsRequest(workflow_id=str(workflow), page_size=2))
    assert by_workflow == [[a.id for a in reversed(ours)][i : i + 2] for i in (0, 2, 4)]
    both = await pages(
        pb.ListArtifactsRequest(workflow_id=str(workflow), run_id=str(runs[0]), page_size=2)
    )
    assert both == [[ours[4].id, ours[2].id], [ours[0].id]]
    assert all(a.workflow_id == str(workflow) for a in ours)

    first: pb.ListArtifactsResponse = await served.stub.ListArtifacts(
        pb.ListArtifactsRequest(workflow_id=str(workflow), page_size=2), metadata=as_tenant(tenant)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.ListArtifacts(
            pb.ListArtifactsRequest(
                workflow_id=str(other_workflow), page_token=first.next_page_token
            ),
            metadata=as_tenant(tenant),
        )
    assert reason(caught.value) == "INVALID_PAGE_TOKEN"


async def test_an_upload_naming_another_workflow_than_the_runs_is_refused(
    served: Served,
) -> None:
    tenant = await served.new_tenant()
    workflow = await served.new_workflow(tenant)
    run = await served.new_run(tenant, workflow)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(served, tenant, run, "a.json", [b"{}"], workflow_id=str(uuid.uuid4()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "WORKFLOW_MISMATCH"

    named = await upload(served, tenant, run, "a.json", [b"{}"], workflow_id=str(workflow))
    assert named.workflow_id == str(workflow)


async def test_the_sweeper_leaves_a_blob_an_upload_holds(served: Served) -> None:
    tenant = await served.new_tenant("enterprise")
    artifact = await upload(served, tenant, await served.new_run(tenant), "a.bin", [b"held"])
    await delete(served, tenant, artifact.id, "admin")

    async with served.db.tenant(tenant) as session:
        # What an upload of the same content holds while it puts the file in place.
        await session.execute(
            text("SELECT 1 FROM artifacts.blobs WHERE sha256 = :s FOR UPDATE"),
            {"s": artifact.sha256},
        )
        await served.sweeper.sweep()
        assert await served.blob_files(tenant) == [artifact.sha256]

    await served.sweeper.sweep()
    assert await served.blob_files(tenant) == []


async def test_an_upload_that_waited_for_the_sweeper_stores_the_content_again(
    served: Served,
) -> None:
    tenant = await served.new_tenant("enterprise")
    run = await served.new_run(tenant)
    content = b"swept while uploaded"
    first = await upload(served, tenant, run, "a.bin", [content])
    await delete(served, tenant, first.id, "admin")

    async with served.db.tenant(tenant) as session:
        # A sweeper freeing the blob: row locked, file deleted, row deleted, not yet committed.
        await session.execute(
            text("SELECT 1 FROM artifacts.blobs WHERE sha256 = :s FOR UPDATE"),
            {"s": first.sha256},
        )
        uploading = asyncio.create_task(upload(served, tenant, run, "b.bin", [content]))
        await asyncio.sleep(0.3)
        assert not uploading.done()
        await served.store.delete(tenant, first.sha256)
        await session.execute(
            text("DELETE FROM artifacts.blobs WHERE sha256 = :s"), {"s": first.sha256}
        )

    second = await uploading
    _, messages = await download(served, tenant, second.id)
    assert b"".join(m.data for m in messages) == content
    assert await served.blob_rows(tenant) == {first.sha256: 1}
    assert await served.storage_used(tenant) == len(content)
