"""Both BlobStore backends (files, and S3 on a local moto server) pass the same cases."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from aias.services.artifacts.blobstore import (
    BlobMissing,
    BlobStore,
    FilesystemBlobStore,
    StoredBlob,
)
from aias.services.artifacts.s3settings import MIN_PART_BYTES
from aias.services.artifacts.s3store import S3BlobStore
from tests.s3_server import new_bucket, s3_settings
from tests.stored_blobs import temporaries

MIB = 1024 * 1024


class Interrupted(Exception):
    """Stands for a client that went away in the middle of an upload."""


@pytest.fixture(params=["filesystem", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> AsyncIterator[BlobStore]:
    built: BlobStore
    if request.param == "filesystem":
        built = FilesystemBlobStore(tmp_path / "blobs")
    else:
        built = S3BlobStore(s3_settings(s3_endpoint, await new_bucket(s3_endpoint), "p/q"))
    await built.prepare()
    yield built
    await built.close()


async def put(store: BlobStore, tenant: uuid.UUID, content: bytes, chunk: int = MIB) -> str:
    async with store.writer(tenant) as writer:
        for start in range(0, len(content), chunk):
            await writer.write(content[start : start + chunk])
        blob = await writer.commit()
    assert blob.sha256 == hashlib.sha256(content).hexdigest()
    return blob.sha256


async def read(
    store: BlobStore, tenant: uuid.UUID, sha256: str, offset: int = 0, length: int | None = None
) -> bytes:
    async with store.reader(tenant, sha256) as reader:
        return b"".join([chunk async for chunk in reader.chunks(64 * 1024, offset, length)])


async def leftovers(store: BlobStore) -> list[str]:
    """Whatever uploads left behind: temporary files, temporary objects, open multipart uploads."""
    return await temporaries(store)


async def test_a_blob_reads_back_whole_and_by_range(store: BlobStore) -> None:
    tenant = uuid.uuid4()
    content = os.urandom(300_000)
    sha = await put(store, tenant, content, chunk=70_000)

    async with store.reader(tenant, sha) as reader:
        assert reader.size == len(content)
    assert await read(store, tenant, sha) == content
    assert await read(store, tenant, sha, 0, 1) == content[:1]
    assert await read(store, tenant, sha, 100_000, 65_537) == content[100_000:165_537]
    assert await read(store, tenant, sha, len(content) - 1, 1) == content[-1:]
    assert await read(store, tenant, sha, 250_000) == content[250_000:]


async def test_a_blob_larger_than_a_part_goes_up_in_parts(store: BlobStore) -> None:
    tenant = uuid.uuid4()
    content = os.urandom(2 * MIN_PART_BYTES + 12_345)

    sha = await put(store, tenant, content)

    assert await read(store, tenant, sha) == content
    assert (
        await read(store, tenant, sha, MIN_PART_BYTES - 10, 20)
        == content[MIN_PART_BYTES - 10 : MIN_PART_BYTES + 10]
    )
    assert await leftovers(store) == []


async def stored(store: BlobStore, tenant: uuid.UUID, sha256: str) -> bool:
    try:
        async with store.reader(tenant, sha256):
            return True
    except BlobMissing:
        return False


async def test_identical_content_is_stored_once_and_exists(store: BlobStore) -> None:
    tenant = uuid.uuid4()
    content = os.urandom(MIN_PART_BYTES + 1)

    first = await put(store, tenant, content)
    second = await put(store, tenant, content)

    assert first == second
    async with store.writer(tenant) as writer:
        await writer.write(content)
        assert await stored(store, tenant, writer.written().sha256)
    assert not await stored(store, uuid.uuid4(), writer.written().sha256)
    assert await leftovers(store) == []


@pytest.mark.parametrize("size", [10, MIN_PART_BYTES + 10])
async def test_an_interrupted_upload_leaves_nothing(store: BlobStore, size: int) -> None:
    tenant = uuid.uuid4()
    content = os.urandom(size)

    async def interrupted() -> StoredBlob:
        async with store.writer(tenant) as writer:
            await writer.write(content)
            written = writer.written()
            raise Interrupted(written)

    with pytest.raises(Interrupted) as failed:
        await interrupted()

    assert not await stored(store, tenant, failed.value.args[0].sha256)
    assert await leftovers(store) == []


async def test_delete_removes_a_blob_and_tolerates_a_missing_one(store: BlobStore) -> None:
    tenant = uuid.uuid4()
    sha = await put(store, tenant, b"to be deleted")

    await store.delete(tenant, sha)
    await store.delete(tenant, sha)

    with pytest.raises(BlobMissing):
        async with store.reader(tenant, sha):
            pass


async def test_the_sweep_removes_abandoned_uploads_but_not_recent_ones(store: BlobStore) -> None:
    tenant = uuid.uuid4()
    async with store.writer(tenant) as writer:
        # A crashed process: its upload stays half done, its temporary data behind.
        await writer.write(os.urandom(MIN_PART_BYTES + 1))
        assert len(await leftovers(store)) == 1

        if isinstance(store, FilesystemBlobStore):
            assert await store.sweep_temporary(3600) == 0
            (abandoned,) = store.root.glob("*/tmp/*")
            stale = time.time() - 7200
            os.utime(abandoned, (stale, stale))
            assert await store.sweep_temporary(3600) == 1
        else:
            # moto dates every multipart upload 2010-11-10, so only the removal can be shown.
            assert await store.sweep_temporary(3600) == 1
        assert await leftovers(store) == []
        with pytest.raises((FileNotFoundError, ClientError)):
            await writer.commit()
    assert await leftovers(store) == []
