"""Artifact downloads over HTTP through the real gateway, the same cases on both blob backends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import cast

import aiohttp
import blake3
import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine
from aias.core.localdb import LocalDatabase
from aias.gateway.server import serving
from aias.gateway.settings import GatewaySettings
from aias.services.artifacts.blobstore import FilesystemBlobStore
from aias.services.artifacts.main import ArtifactsSettings, build_server
from aias.services.artifacts.s3store import S3BlobStore
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN, server_settings
from tests.integration.servers import Execution, Tenancy, running
from tests.s3_server import new_bucket, s3_settings
from tests.stored_blobs import temporaries

MIB = 1024 * 1024
SIZE = 300_000
UNREACHABLE = "127.0.0.1:9"


@dataclass
class Site:
    """The gateway in front of a real artifacts service on one backend, and a tenant of it."""

    backend: str
    base: str
    http: aiohttp.ClientSession
    stub: pb_grpc.ArtifactsServiceAsyncStub
    store: FilesystemBlobStore | S3BlobStore
    db: Database
    tenant: uuid.UUID
    api_key: str
    registry: CollectorRegistry

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def url(self, artifact: pb.Artifact) -> str:
        return f"{self.base}/api/artifacts/{artifact.id}/download"

    async def get(
        self, artifact: pb.Artifact, **headers: str
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.http.get(self.url(artifact), headers={**self.auth, **headers}) as response:
            return response, await response.read()

    async def new_run(self) -> uuid.UUID:
        """A finished run of a one-step workflow, as execution stores it."""
        workflow, run = uuid.uuid4(), uuid.uuid4()
        async with self.db.tenant(self.tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.workflows (id, tenant_id, name, enabled, "
                    "current_version) VALUES (:w, :t, 'wf', true, 1)"
                ),
                {"w": workflow, "t": self.tenant},
            )
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) VALUES (:r, :t, :w, 1, "
                    "'succeeded', 1, '\\x7b7d', 'application/json')"
                ),
                {"r": run, "t": self.tenant, "w": workflow},
            )
        return run

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-aias-tenant-id", str(self.tenant)),)

    async def upload(
        self, content: bytes, name: str = "out.bin", media_type: str = "application/octet-stream"
    ) -> pb.Artifact:
        run = await self.new_run()

        async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(
                metadata=pb.UploadArtifactMetadata(
                    run_id=str(run), step_id="save", name=name, media_type=media_type
                )
            )
            for start in range(0, len(content), MIB):
                yield pb.UploadArtifactRequest(chunk=content[start : start + MIB])

        reply: pb.UploadArtifactResponse = await self.stub.UploadArtifact(
            messages(), metadata=self.metadata()
        )
        return reply.artifact

    async def corrupt(self, artifact: pb.Artifact) -> None:
        """Flips one byte of the stored blob, keeping its size: only the digest can tell."""
        tenant = self.tenant
        async with self.store.reader(tenant, artifact.sha256) as reader:
            content = bytearray(b"".join([c async for c in reader.chunks(MIB)]))
        content[len(content) // 2] ^= 0xFF
        if isinstance(self.store, FilesystemBlobStore):
            self.store.blob_path(tenant, artifact.sha256).write_bytes(content)
        else:
            await self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.store.key(tenant, artifact.sha256),
                Body=bytes(content),
            )

    async def recorded_blake3(self, artifact: pb.Artifact) -> str | None:
        async with self.db.tenant(self.tenant) as session:
            found = await session.execute(
                text("SELECT blake3 FROM artifacts.blobs WHERE sha256 = :sha256"),
                {"sha256": artifact.sha256},
            )
            return cast("str | None", found.scalar_one())

    async def record_blake3(self, artifact: pb.Artifact, value: str | None) -> None:
        async with self.db.tenant(self.tenant) as session:
            await session.execute(
                text("UPDATE artifacts.blobs SET blake3 = :value WHERE sha256 = :sha256"),
                {"sha256": artifact.sha256, "value": value},
            )

    async def leftovers(self) -> list[str]:
        return await temporaries(self.store, self.tenant)


@pytest.fixture(scope="module", params=["filesystem", "s3"])
async def site(
    request: pytest.FixtureRequest,
    database: LocalDatabase,
    tenancy: Tenancy,
    execution: Execution,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
) -> AsyncIterator[Site]:
    backend = str(request.param)
    blob_root = tmp_path_factory.mktemp("artifacts")
    s3 = (
        s3_settings(s3_endpoint, await new_bucket(s3_endpoint), "blobs")
        if backend == "s3"
        else None
    )
    settings = ArtifactsSettings(
        server=server_settings("artifacts"),
        database_url=database.app_url,
        blob_root=blob_root,
        tenancy_addr=tenancy.address,
        execution_addr=execution.address,
        entitlements_ttl=0.0,
        s3=s3,
    )
    # The test's own handle on the same storage, to look at and damage what the service stored.
    store: FilesystemBlobStore | S3BlobStore = (
        S3BlobStore(s3) if s3 is not None else FilesystemBlobStore(blob_root)
    )
    await store.prepare()
    created = await tenancy.stub.CreateTenant(
        tenancy_pb.CreateTenantRequest(name="downloads", plan="pro")
    )
    db = Database(create_engine(database.app_url, name="tests", max_connections=4))
    built = await build_server(settings)
    async with running(built) as address:
        gateway = GatewaySettings(
            host="127.0.0.1",
            port=0,
            internal_token=INTERNAL_TOKEN,
            admin_token="a" * 32,
            dashboard_secret=DASHBOARD_SECRET,
            backends={
                "tenancy": tenancy.address,
                "execution": execution.address,
                "artifacts": address,
                "billing": UNREACHABLE,
            },
            log_level="INFO",
            ready_file=None,
            grace_seconds=1.0,
        )
        async with serving(gateway) as port, aiohttp.ClientSession() as http:
            channel = internal_channel(address, INTERNAL_TOKEN)
            stub = cast("pb_grpc.ArtifactsServiceAsyncStub", pb_grpc.ArtifactsServiceStub(channel))
            yield Site(
                backend,
                f"http://127.0.0.1:{port}",
                http,
                stub,
                store,
                db,
                uuid.UUID(created.tenant.id),
                created.admin_key,
                built.metrics.registry,
            )
            await channel.close()
    await db.close()
    await store.close()


@pytest.fixture(scope="module")
async def stored(site: Site) -> tuple[pb.Artifact, bytes]:
    content = os.urandom(SIZE)
    return await site.upload(content, "data.bin"), content


async def test_the_whole_body_with_its_headers(
    site: Site, stored: tuple[pb.Artifact, bytes]
) -> None:
    artifact, content = stored

    response, body = await site.get(artifact)

    assert response.status == 200
    assert body == content
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == 'attachment; filename="data.bin"'


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),  # the first byte
        ("bytes=1000-70999", 1000, 70999),  # a middle slice over several chunks
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),  # the last byte
        ("bytes=-10", SIZE - 10, SIZE - 1),  # a suffix
        (f"bytes={SIZE - 100}-", SIZE - 100, SIZE - 1),  # an open end
        ("bytes=299990-999999999", SIZE - 10, SIZE - 1),  # an end past the end is the end
        (f"bytes=-{SIZE * 2}", 0, SIZE - 1),  # a suffix longer than the body is the body
    ],
)
async def test_a_single_range_is_206_with_its_bytes(
    site: Site, stored: tuple[pb.Artifact, bytes], header: str, start: int, end: int
) -> None:
    artifact, content = stored

    response, body = await site.get(artifact, Range=header)

    assert response.status == 206
    assert body == content[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["ETag"] == f'"{artifact.sha256}"'


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
async def test_an_unsatisfiable_range_is_416_with_the_size(
    site: Site, stored: tuple[pb.Artifact, bytes], header: str
) -> None:
    artifact, _ = stored

    response, body = await site.get(artifact, Range=header)

    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    assert b"RANGE_NOT_SATISFIABLE" in body


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-0,5-9",  # several ranges: the whole body, documented
        "bytes=9-5",  # not valid syntax: ignored
        "items=0-5",  # a unit other than bytes: ignored
        "bytes=abc",
    ],
)
async def test_several_or_invalid_ranges_get_the_whole_body(
    site: Site, stored: tuple[pb.Artifact, bytes], header: str
) -> None:
    artifact, content = stored

    response, body = await site.get(artifact, Range=header)

    assert (response.status, body) == (200, content)


@pytest.mark.parametrize("template", ['"{}"', 'W/"{}"', '"other", "{}"', '"other",W/"{}" ', "*"])
async def test_if_none_match_with_the_etag_is_304_without_a_body(
    site: Site, stored: tuple[pb.Artifact, bytes], template: str
) -> None:
    artifact, _ = stored

    response, body = await site.get(artifact, **{"If-None-Match": template.format(artifact.sha256)})

    assert response.status == 304
    assert body == b""
    assert response.headers["ETag"] == f'"{artifact.sha256}"'


async def test_if_none_match_with_another_etag_is_the_body(
    site: Site, stored: tuple[pb.Artifact, bytes]
) -> None:
    artifact, content = stored

    response, body = await site.get(artifact, **{"If-None-Match": '"0000", W/"1111"'})

    assert (response.status, body) == (200, content)


async def test_if_range_sends_the_range_only_while_the_etag_matches(
    site: Site, stored: tuple[pb.Artifact, bytes]
) -> None:
    artifact, content = stored

    matching, part = await site.get(
        artifact, Range="bytes=10-19", **{"If-Range": f'"{artifact.sha256}"'}
    )
    changed, whole = await site.get(artifact, Range="bytes=10-19", **{"If-Range": '"0000"'})
    weak, _ = await site.get(
        artifact, Range="bytes=10-19", **{"If-Range": f'W/"{artifact.sha256}"'}
    )
    dated, _ = await site.get(
        artifact, Range="bytes=10-19", **{"If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )

    assert (matching.status, part) == (206, content[10:20])
    assert (changed.status, whole) == (200, content)
    assert (weak.status, dated.status) == (200, 200)


async def test_head_answers_the_headers_without_the_body(
    site: Site, stored: tuple[pb.Artifact, bytes]
) -> None:
    artifact, _ = stored

    async with site.http.head(site.url(artifact), headers=site.auth) as whole:
        assert await whole.read() == b""
    async with site.http.head(
        site.url(artifact), headers={**site.auth, "Range": "bytes=-5"}
    ) as part:
        assert await part.read() == b""

    assert whole.status == 200
    assert whole.headers["Content-Length"] == str(SIZE)
    assert whole.headers["ETag"] == f'"{artifact.sha256}"'
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}"


@pytest.mark.parametrize(
    "name",
    [
        'a "quoted" name.txt',
        "résumé 2024 — 📄.pdf",
        "50%41 done.txt",
        "semi;colon, comma=equals.txt",
        "日本語のファイル.csv",
    ],
)
async def test_odd_file_names_come_back_exactly_and_safely(site: Site, name: str) -> None:
    artifact = await site.upload(b"odd", name)

    response, body = await site.get(artifact)

    disposition = response.headers["Content-Disposition"]
    assert disposition.isascii()
    assert _filename(disposition) == name
    assert body == b"odd"


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.txt", "c:\\x.txt", ".hidden"])
async def test_path_like_names_are_refused_at_upload(site: Site, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await site.upload(b"x", name)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_empty_artifact_ranges_and_downloads(site: Site) -> None:
    artifact = await site.upload(b"", "empty.txt", "text/plain")

    whole, body = await site.get(artifact)
    ranged, _ = await site.get(artifact, Range="bytes=0-")

    assert (whole.status, body, whole.headers["Content-Length"]) == (200, b"", "0")
    assert (ranged.status, ranged.headers["Content-Range"]) == (416, "bytes */0")


async def test_a_corrupt_blob_ends_the_download_truncated_and_is_counted(site: Site) -> None:
    content = os.urandom(3 * MIB + 5)
    artifact = await site.upload(content, "fragile.bin")
    await site.corrupt(artifact)
    before = _corrupt_count(site.registry)

    async with site.http.get(site.url(artifact), headers=site.auth) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await _grpc_bytes(site, pb.DownloadArtifactRequest(artifact_id=artifact.id))

    assert lost.value.code() == grpc.StatusCode.DATA_LOSS
    assert _corrupt_count(site.registry) == before + 2


async def test_whole_reads_are_checked_against_the_blake3_recorded_at_upload(site: Site) -> None:
    content = os.urandom(MIB + 7)
    artifact = await site.upload(content, "checked.bin")
    assert await site.recorded_blake3(artifact) == blake3.blake3(content).hexdigest()

    # Intact bytes, a different digest on record: only a check against it can fail.
    await site.record_blake3(artifact, blake3.blake3(b"other content").hexdigest())
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await _grpc_bytes(site, pb.DownloadArtifactRequest(artifact_id=artifact.id))

    assert lost.value.code() == grpc.StatusCode.DATA_LOSS


async def test_a_blob_recorded_before_its_blake3_is_checked_against_its_sha256(
    site: Site,
) -> None:
    content = os.urandom(MIB + 11)
    artifact = await site.upload(content, "older.bin")
    await site.record_blake3(artifact, None)

    _, body = await site.get(artifact)
    assert body == content
    # The next upload of the same content records the digest the row lacked.
    await site.upload(content, "older-again.bin")
    assert await site.recorded_blake3(artifact) == blake3.blake3(content).hexdigest()

    await site.record_blake3(artifact, None)
    await site.corrupt(artifact)
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await _grpc_bytes(site, pb.DownloadArtifactRequest(artifact_id=artifact.id))

    assert lost.value.code() == grpc.StatusCode.DATA_LOSS


async def test_a_corrupt_blob_of_one_chunk_is_an_error_before_any_byte(site: Site) -> None:
    artifact = await site.upload(os.urandom(1000), "small.bin")
    await site.corrupt(artifact)

    response, body = await site.get(artifact)

    assert response.status == 500
    assert b"BLOB_CORRUPT" in body


async def test_a_window_by_grpc_offset_and_length(
    site: Site, stored: tuple[pb.Artifact, bytes]
) -> None:
    artifact, content = stored

    middle = await _grpc_bytes(
        site, pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=5, length=100_000)
    )
    rest = await _grpc_bytes(
        site, pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=SIZE - 7)
    )
    with pytest.raises(grpc.aio.AioRpcError) as past:
        await _grpc_bytes(
            site, pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=SIZE - 1, length=2)
        )

    assert middle == content[5:100_005]
    assert rest == content[-7:]
    assert past.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_an_interrupted_upload_leaves_nothing_visible(site: Site) -> None:
    run = await site.new_run()
    sent = asyncio.Event()

    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(
            metadata=pb.UploadArtifactMetadata(
                run_id=str(run), step_id="save", name="cut.bin", media_type="text/plain"
            )
        )
        # More than one S3 part, so a multipart upload is open when the client goes away.
        for _ in range(7):
            yield pb.UploadArtifactRequest(chunk=os.urandom(MIB))
        sent.set()
        await asyncio.Event().wait()

    call = site.stub.UploadArtifact(messages(), metadata=site.metadata())
    await sent.wait()
    await asyncio.sleep(0.5)
    call.cancel()

    for _ in range(50):
        if not await site.leftovers():
            break
        await asyncio.sleep(0.1)
    assert await site.leftovers() == []
    listed = await site.stub.ListArtifacts(
        pb.ListArtifactsRequest(run_id=str(run)), metadata=site.metadata()
    )
    assert list(listed.artifacts) == []


async def _grpc_bytes(site: Site, request: pb.DownloadArtifactRequest) -> bytes:
    parts: Sequence[bytes] = [
        message.data
        async for message in site.stub.DownloadArtifact(request, metadata=site.metadata())
    ]
    return b"".join(parts)


def _filename(disposition: str) -> str:
    """The name a client reads (RFC 6266: `filename*` over `filename`), decoded by the stdlib."""
    kind, _, rest = disposition.partition(";")
    assert kind == "attachment"
    params = dict(re.findall(r'\s*([\w*]+)=("(?:[^"\\]|\\.)*"|[^;]*);?', rest))
    fallback = params["filename"]
    assert fallback.startswith('"')
    assert fallback.endswith('"')
    assert '"' not in fallback[1:-1]
    assert "\\" not in fallback[1:-1]
    parsed = EmailMessage()
    parsed["Content-Disposition"] = (
        f"attachment; filename*={params['filename*']}"
        if "filename*" in params
        else f"attachment; filename={fallback}"
    )
    return str(parsed.get_filename())


def _corrupt_count(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("aias_artifact_blob_corrupt_total", {"kind": "digest"})
    return float(value or 0.0)
