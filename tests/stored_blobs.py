"""What a blob store holds, listed the same way on both backends, for tests to look at."""

from __future__ import annotations

import uuid

from aias.services.artifacts.blobstore import BlobStore, FilesystemBlobStore
from aias.services.artifacts.s3store import S3BlobStore


def _backend(store: BlobStore) -> FilesystemBlobStore | S3BlobStore:
    if not isinstance(store, FilesystemBlobStore | S3BlobStore):
        raise TypeError(f"no listing for {type(store).__name__}")
    return store


async def blob_digests(store: BlobStore, tenant_id: uuid.UUID) -> list[str]:
    """The digests of the tenant's stored blobs, sorted."""
    backend = _backend(store)
    if isinstance(backend, FilesystemBlobStore):
        blobs = backend.tenant_dir(tenant_id) / "sha256"
        return sorted(path.name for path in blobs.glob("*/*") if path.is_file())
    prefix = f"{backend.prefix}{tenant_id}/sha256/"
    pages = backend.client.get_paginator("list_objects_v2")
    found: list[str] = []
    async for page in pages.paginate(Bucket=backend.bucket, Prefix=prefix):
        found += [item["Key"].rsplit("/", 1)[-1] for item in page.get("Contents", [])]
    return sorted(found)


async def temporaries(store: BlobStore, tenant_id: uuid.UUID | None = None) -> list[str]:
    """What uploads in progress (or abandoned) hold: temporary files, temporary objects and
    open multipart uploads, of one tenant or of every tenant."""
    backend = _backend(store)
    tenant = "*" if tenant_id is None else str(tenant_id)
    if isinstance(backend, FilesystemBlobStore):
        return sorted(str(path) for path in backend.root.glob(f"{tenant}/tmp/*"))
    prefix = f"{backend.prefix}tmp/{'' if tenant_id is None else f'{tenant_id}/'}"
    client = backend.client
    found: list[str] = []
    async for uploads in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=backend.bucket, Prefix=prefix
    ):
        # Filtered here as well: not every S3-compatible server honours the prefix of this call.
        found += [u["Key"] for u in uploads.get("Uploads", []) if u["Key"].startswith(prefix)]
    async for objects in client.get_paginator("list_objects_v2").paginate(
        Bucket=backend.bucket, Prefix=prefix
    ):
        found += [item["Key"] for item in objects.get("Contents", [])]
    return sorted(found)


async def read_blob(store: BlobStore, tenant_id: uuid.UUID, sha256: str) -> bytes:
    """A stored blob's bytes, read through the store."""
    async with store.reader(tenant_id, sha256) as reader:
        return b"".join([chunk async for chunk in reader.chunks(1024 * 1024)])
