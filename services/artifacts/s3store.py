"""The S3-compatible BlobStore backend (aiobotocore): multipart uploads, ranged GETs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from aias.services.artifacts.blobstore import (
    TEMP_PREFIX,
    BlobMissing,
    BlobWriter,
    ContentDigests,
    Digest,
    StoredBlob,
)
from aias.services.artifacts.domain import Chunk
from aias.services.artifacts.s3settings import (
    COPY_PART_BYTES,
    MAX_COPY_BYTES,
    MIN_PART_BYTES,
    S3Settings,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _NOT_FOUND


class _S3Writer:
    """Hashes as it buffers one part; a blob larger than a part goes up as a multipart upload
    to a temporary key and is copied to its content address on commit."""

    def __init__(self, store: S3BlobStore, tenant_id: uuid.UUID) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._temp_key = store.temp_key(tenant_id)
        self._digests = ContentDigests()
        self._size = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._temp_complete = False
        self.committed = False

    async def write(self, chunk: Chunk) -> None:
        self._digests.update(chunk)
        self._size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= self._store.part_bytes:
            await self._send_part()

    def written(self) -> StoredBlob:
        return self._digests.stored(self._size)

    async def _send_part(self) -> None:
        client = self._store.client
        bucket = self._store.bucket
        if self._upload_id is None:
            created = await client.create_multipart_upload(Bucket=bucket, Key=self._temp_key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = await client.upload_part(
            Bucket=bucket,
            Key=self._temp_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._buffer.clear()

    async def commit(self) -> StoredBlob:
        blob = self.written()
        client = self._store.client
        bucket = self._store.bucket
        target = self._store.key(self._tenant_id, blob.sha256)
        if self._upload_id is None:
            # It fits in one part: a single PUT at its address is atomic, nothing to copy.
            if not await self._store.exists(self._tenant_id, blob):
                await client.put_object(Bucket=bucket, Key=target, Body=bytes(self._buffer))
            self._buffer.clear()
            self.committed = True
            return blob
        if self._buffer:
            await self._send_part()
        await client.complete_multipart_upload(
            Bucket=bucket,
            Key=self._temp_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
        )
        self._temp_complete = True
        if not await self._store.exists(self._tenant_id, blob):
            await self._store.copy(self._temp_key, target, blob.size)
        await client.delete_object(Bucket=bucket, Key=self._temp_key)
        self.committed = True
        return blob

    async def discard(self) -> None:
        """Aborts the multipart upload or deletes the temporary object; the sweep retries."""
        client = self._store.client
        bucket = self._store.bucket
        self._buffer.clear()
        try:
            if self._temp_complete:
                await client.delete_object(Bucket=bucket, Key=self._temp_key)
            elif self._upload_id is not None:
                await client.abort_multipart_upload(
                    Bucket=bucket, Key=self._temp_key, UploadId=self._upload_id
                )
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "abandoned upload not cleaned up; the temporary sweep will",
                extra={"key": self._temp_key, "error": str(error)},
            )


class _S3Reader:
    def __init__(self, client: S3Client, bucket: str, key: str, size: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self.size = size

    async def chunks(
        self,
        chunk_size: int,
        offset: int = 0,
        length: int | None = None,
        digest: Digest | None = None,
    ) -> AsyncIterator[bytes]:
        length = self.size - offset if length is None else length
        if length <= 0:
            return
        try:
            if length == self.size:
                response = await self._client.get_object(Bucket=self._bucket, Key=self._key)
            else:
                # A ranged GET: S3 sends only these bytes.
                response = await self._client.get_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Range=f"bytes={offset}-{offset + length - 1}",
                )
        except ClientError as error:
            if _missing(error):
                raise BlobMissing(f"blob {self._key} does not exist") from None
            raise
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(chunk_size):
                if digest is not None:
                    await asyncio.to_thread(digest.update, chunk)
                yield chunk


class S3BlobStore:
    """Blobs at `<prefix><tenant_id>/sha256/<aa>/<hex>`; uploads at `<prefix>tmp/<tenant_id>/`."""

    def __init__(self, settings: S3Settings) -> None:
        if settings.part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts must be at least {MIN_PART_BYTES} bytes")
        self._settings = settings
        self.bucket = settings.location.bucket
        self.prefix = settings.location.prefix
        self.part_bytes = settings.part_bytes
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the S3 blob store is used before prepare()")
        return self._client

    def key(self, tenant_id: uuid.UUID, sha256: str) -> str:
        return f"{self.prefix}{tenant_id}/sha256/{sha256[:2]}/{sha256}"

    def temp_key(self, tenant_id: uuid.UUID) -> str:
        return f"{self.prefix}tmp/{tenant_id}/{TEMP_PREFIX}{uuid.uuid4().hex}"

    async def prepare(self) -> None:
        """Opens the client and checks the bucket answers, so a wrong setting fails at start-up."""
        settings = self._settings
        if self._client is None:
            self._client = await self._stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=settings.endpoint_url,
                    region_name=settings.region,
                    aws_access_key_id=settings.access_key_id,
                    aws_secret_access_key=settings.secret_access_key,
                    aws_session_token=settings.session_token,
                    config=AioConfig(retries={"max_attempts": 3, "mode": "standard"}),
                )
            )
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as error:
            raise RuntimeError(
                f"artifact bucket {self.bucket!r} cannot be used"
                f"{f' at {settings.endpoint_url}' if settings.endpoint_url else ''}: {error}"
            ) from None

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    @asynccontextmanager
    async def writer(self, tenant_id: uuid.UUID) -> AsyncIterator[BlobWriter]:
        writer = _S3Writer(self, tenant_id)
        try:
            yield writer
        finally:
            if not writer.committed:
                await writer.discard()

    async def exists(self, tenant_id: uuid.UUID, blob: StoredBlob) -> bool:
        size = await self._size(self.key(tenant_id, blob.sha256))
        return size == blob.size

    async def _size(self, key: str) -> int | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _missing(error):
                return None
            raise
        return int(head["ContentLength"])

    @asynccontextmanager
    async def reader(self, tenant_id: uuid.UUID, sha256: str) -> AsyncIterator[_S3Reader]:
        key = self.key(tenant_id, sha256)
        size = await self._size(key)
        if size is None:
            raise BlobMissing(f"blob s3://{self.bucket}/{key} does not exist")
        yield _S3Reader(self.client, self.bucket, key, size)

    async def delete(self, tenant_id: uuid.UUID, sha256: str) -> None:
        # S3 answers a delete of a missing key with success.
        await self.client.delete_object(Bucket=self.bucket, Key=self.key(tenant_id, sha256))

    async def copy(self, source: str, target: str, size: int) -> None:
        """A server-side copy: one request up to 5 GiB, part by part beyond."""
        client = self.client
        origin = {"Bucket": self.bucket, "Key": source}
        if size <= MAX_COPY_BYTES:
            await client.copy_object(Bucket=self.bucket, Key=target, CopySource=origin)  # type: ignore[arg-type]
            return
        created = await client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART_BYTES), start=1):
                end = min(start + COPY_PART_BYTES, size) - 1
                copied = await client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=origin,  # type: ignore[arg-type]
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"ETag": copied["CopyPartResult"]["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id)
            raise

    async def sweep_temporary(self, older_than_seconds: float) -> int:
        """Aborts stale multipart uploads and deletes stale temporary objects."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        temp = f"{self.prefix}tmp/"
        client = self.client
        removed = 0
        uploads = client.get_paginator("list_multipart_uploads")
        async for page in uploads.paginate(Bucket=self.bucket, Prefix=temp):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        objects = client.get_paginator("list_objects_v2")
        async for listed in objects.paginate(Bucket=self.bucket, Prefix=temp):
            for item in listed.get("Contents", []):
                if item["LastModified"] < cutoff:
                    await client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        if removed:
            log.info("abandoned uploads removed", extra={"count": removed})
        return removed
