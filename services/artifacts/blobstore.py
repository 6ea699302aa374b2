"""Content-addressed blob storage per tenant: the BlobStore interface and its filesystem backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BlobMissing(Exception):
    """The blob an artifact names is not in the store."""


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int


class BlobWriter(Protocol):
    """An upload in progress; nothing is visible until `commit` returns."""

    async def write(self, chunk: bytes) -> None: ...

    def written(self) -> StoredBlob:
        """The digest and size of what was written so far."""
        ...

    async def commit(self) -> StoredBlob: ...


class BlobReader(Protocol):
    """An opened blob whose size is known before the first byte is read."""

    size: int

    def chunks(self, chunk_size: int) -> AsyncIterator[bytes]: ...


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
        """Removes a blob; a blob that is already gone is fine."""
        ...


class _FileWriter:
    """Hashes and writes to a temporary file next to the blobs, so the final rename is atomic."""

    def __init__(self, file: BinaryIO, temp: Path, blobs: Path) -> None:
        self._file = file
        self._temp = temp
        self._blobs = blobs
        self._hash = hashlib.sha256()
        self._size = 0
        self.committed = False

    async def write(self, chunk: bytes) -> None:
        await asyncio.to_thread(self._write, chunk)

    def _write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self._size += len(chunk)

    def written(self) -> StoredBlob:
        return StoredBlob(self._hash.hexdigest(), self._size)

    async def commit(self) -> StoredBlob:
        blob = self.written()
        await asyncio.to_thread(self._commit, blob)
        self.committed = True
        return blob

    def _commit(self, blob: StoredBlob) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._blobs / blob.sha256[:2] / blob.sha256
        # Identical content is stored once; a file of the wrong size (a torn copy) is replaced.
        if target.is_file() and target.stat().st_size == blob.size:
            self._temp.unlink()
            return
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

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._file.read, chunk_size):
            yield chunk


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
        fd, name = tempfile.mkstemp(dir=temp_dir, prefix="upload-", suffix=".part")
        return _FileWriter(os.fdopen(fd, "wb"), Path(name), self.tenant_dir(tenant_id) / "sha256")

    async def delete(self, tenant_id: uuid.UUID, sha256: str) -> None:
        path = self.blob_path(tenant_id, sha256)
        await asyncio.to_thread(self._delete, path)

    @staticmethod
    def _delete(path: Path) -> None:
        with suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

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
