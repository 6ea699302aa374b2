"""Content-addressed blob storage per tenant: the BlobStore interface and its filesystem backend."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import blake3

from aias.core.periodic import Periodic
from aias.services.artifacts.domain import Chunk

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
TEMP_PREFIX = "upload-"
# A chunk up to this size is hashed and buffered on the event loop (microseconds); a larger one
# is hashed and written in threads.
INLINE_WRITE_BYTES = 64 * 1024

log = logging.getLogger(__name__)


class Digest(Protocol):
    """A hash being computed (`blake3.blake3()`, `hashlib.sha256()`), as reading needs it."""

    def update(self, data: Chunk, /) -> object: ...

    def hexdigest(self) -> str: ...


class BlobMissing(Exception):
    """The blob an artifact names is not in the store."""


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    # The BLAKE3 of the same bytes: what whole reads are checked against. As hard to forge as
    # the SHA-256 that names the content, and four times faster on one core.
    blake3: str


class ContentDigests:
    """The digests of content being stored: SHA-256 names it, BLAKE3 checks its reads."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._blake3 = blake3.blake3()

    def update(self, data: Chunk) -> None:
        """Both release the GIL for all but small inputs, so this may run in a thread."""
        self._sha256.update(data)
        self._blake3.update(data)

    def stored(self, size: int) -> StoredBlob:
        return StoredBlob(self._sha256.hexdigest(), size, self._blake3.hexdigest())

    @classmethod
    def of(cls, content: bytes) -> StoredBlob:
        digests = cls()
        digests.update(content)
        return digests.stored(len(content))


class BlobWriter(Protocol):
    """An upload in progress; nothing is visible until `commit` returns."""

    async def write(self, chunk: Chunk) -> None: ...

    def written(self) -> StoredBlob:
        """The digest and size of what was written so far."""
        ...

    async def commit(self) -> StoredBlob: ...


class BlobReader(Protocol):
    """An opened blob whose size is known before the first byte is read."""

    size: int

    def chunks(
        self,
        chunk_size: int,
        offset: int = 0,
        length: int | None = None,
        digest: Digest | None = None,
    ) -> AsyncIterator[bytes]:
        """`length` bytes from `offset` (to the end when None), at most `chunk_size` at a time.

        The store starts reading at `offset` (a seek, a ranged GET): bytes before it are never
        read. The caller keeps `offset + length` within `size`. Each chunk is fed to `digest`,
        when given, before it is yielded, off the event loop.
        """
        ...


class InlineBlob:
    """A blob kept in its database row, read from memory like a stored one."""

    def __init__(self, content: bytes) -> None:
        self._content = content
        self.size = len(content)

    async def chunks(
        self,
        chunk_size: int,
        offset: int = 0,
        length: int | None = None,
        digest: Digest | None = None,
    ) -> AsyncIterator[bytes]:
        end = self.size if length is None else offset + length
        for start in range(offset, end, chunk_size):
            chunk = self._content[start : min(end, start + chunk_size)]
            if digest is not None:
                digest.update(chunk)
            yield chunk


class BlobStore(Protocol):
    """Where artifact bytes live, keyed by tenant and SHA-256."""

    async def prepare(self) -> None:
        """Checks the store is usable, so a misconfigured process fails at start-up."""
        ...

    def writer(self, tenant_id: uuid.UUID) -> AbstractAsyncContextManager[BlobWriter]:
        """An upload; leaving the block without `commit` (or by an error) discards it."""
        ...

    def reader(self, tenant_id: uuid.UUID, sha256: str) -> AbstractAsyncContextManager[BlobReader]:
        """Opens a blob, or raises BlobMissing."""
        ...

    async def delete(self, tenant_id: uuid.UUID, sha256: str) -> None:
        """Removes a blob; one already gone is not an error. The caller knows nothing names it."""
        ...

    async def sweep_temporary(self, older_than_seconds: float) -> int:
        """Removes what uploads left behind (a crash, a lost connection) and returns how many.

        Only uploads untouched for `older_than_seconds` are removed, so one in progress is kept.
        """
        ...

    async def close(self) -> None:
        """Releases the store's connections."""
        ...


class _FileWriter:
    """Hashes and writes to a temporary file next to the blobs, so the final rename is atomic."""

    def __init__(self, file: BinaryIO, temp: Path, blobs: Path) -> None:
        self._file = file
        self._temp = temp
        self._blobs = blobs
        self._digests = ContentDigests()
        self._size = 0
        self.committed = False

    async def write(self, chunk: Chunk) -> None:
        if len(chunk) <= INLINE_WRITE_BYTES:
            # Into the file's buffer: cheaper than the two hand-offs to threads below.
            self._digests.update(chunk)
            self._file.write(chunk)
        else:
            # Both release the GIL: hashing and writing the chunk run side by side.
            await asyncio.gather(
                asyncio.to_thread(self._digests.update, chunk),
                asyncio.to_thread(self._file.write, chunk),
            )
        self._size += len(chunk)

    def written(self) -> StoredBlob:
        return self._digests.stored(self._size)

    async def commit(self) -> StoredBlob:
        blob = self.written()
        await asyncio.to_thread(self._commit, blob)
        self.committed = True
        return blob

    def _commit(self, blob: StoredBlob) -> None:
        target = self._blobs / blob.sha256[:2] / blob.sha256
        # Identical content is stored once (the copy is dropped unsynced); a file of the wrong
        # size (a torn copy) is replaced.
        if target.is_file() and target.stat().st_size == blob.size:
            self._file.close()
            self._temp.unlink()
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._temp, target)
        _fsync_dir(target.parent)

    def discard(self) -> None:
        # Synchronous on purpose: it runs while the task is being cancelled, and a buffered
        # file's close waits for a write still running in a worker thread.
        self._file.close()
        with suppress(FileNotFoundError):
            self._temp.unlink()


class _FileReader:
    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self.size = size

    async def chunks(
        self,
        chunk_size: int,
        offset: int = 0,
        length: int | None = None,
        digest: Digest | None = None,
    ) -> AsyncIterator[bytes]:
        remaining = self.size - offset if length is None else length
        await asyncio.to_thread(self._file.seek, offset)
        while remaining > 0:
            # One trip to a worker thread per chunk: reading and hashing there both release
            # the GIL, and each trip costs the event loop more than the hashing itself.
            chunk = await asyncio.to_thread(self._read, min(chunk_size, remaining), digest)
            if not chunk:
                return  # the file is shorter than it was; the caller's count says so
            remaining -= len(chunk)
            yield chunk

    def _read(self, size: int, digest: Digest | None) -> bytes:
        chunk = self._file.read(size)
        if digest is not None:
            digest.update(chunk)
        return chunk


def _fsync_dir(path: Path) -> None:
    """Makes a rename durable: the directory entry is flushed, not only the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore:
    """Blobs at `<root>/<tenant_id>/sha256/<aa>/<hex>`; uploads in `<root>/<tenant_id>/tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def tenant_dir(self, tenant_id: uuid.UUID) -> Path:
        return self.root / str(tenant_id)

    def blob_path(self, tenant_id: uuid.UUID, sha256: str) -> Path:
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.tenant_dir(tenant_id) / "sha256" / sha256[:2] / sha256

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"artifact directory {self.root} is not writable")

    @asynccontextmanager
    async def writer(self, tenant_id: uuid.UUID) -> AsyncIterator[BlobWriter]:
        writer = await asyncio.to_thread(self._open_writer, tenant_id)
        try:
            yield writer
        finally:
            if not writer.committed:
                writer.discard()

    def _open_writer(self, tenant_id: uuid.UUID) -> _FileWriter:
        temp_dir = self.tenant_dir(tenant_id) / "tmp"
        temp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=temp_dir, prefix=TEMP_PREFIX, suffix=".part")
        return _FileWriter(os.fdopen(fd, "wb"), Path(name), self.tenant_dir(tenant_id) / "sha256")

    async def delete(self, tenant_id: uuid.UUID, sha256: str) -> None:
        path = self.blob_path(tenant_id, sha256)
        await asyncio.to_thread(self._delete, path)

    @staticmethod
    def _delete(path: Path) -> None:
        with suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

    async def sweep_temporary(self, older_than_seconds: float) -> int:
        return await asyncio.to_thread(self._sweep_temporary, time.time() - older_than_seconds)

    def _sweep_temporary(self, cutoff: float) -> int:
        removed = 0
        # A writer's file changes with every chunk, so its mtime says when it was last used.
        for temp in self.root.glob(f"*/tmp/{TEMP_PREFIX}*"):
            with suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        if removed:
            log.info("abandoned uploads removed", extra={"count": removed})
        return removed

    async def close(self) -> None:
        """Nothing to release: every file is closed when its upload or download ends."""

    @asynccontextmanager
    async def reader(self, tenant_id: uuid.UUID, sha256: str) -> AsyncIterator[BlobReader]:
        path = self.blob_path(tenant_id, sha256)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobMissing(f"blob {path} does not exist") from None
        try:
            yield _FileReader(file, os.fstat(file.fileno()).st_size)
        finally:
            file.close()


class TemporarySweep:
    """Removes abandoned uploads at start-up and then every `interval_seconds`."""

    def __init__(self, store: BlobStore, max_age_seconds: float, interval_seconds: float) -> None:
        self._periodic = Periodic(
            "artifact-temp-sweep",
            lambda: store.sweep_temporary(max_age_seconds),
            interval_seconds,
        )

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
