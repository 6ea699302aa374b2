"""Artifacts process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine
from aias.core.entitlements import EntitlementsCache, UsageClient
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.process import HeapThresholds
from aias.core.settings import Env, ServerSettings
from aias.core.tickets import ticket_key
from aias.services.artifacts.blobstore import BlobStore, FilesystemBlobStore, TemporarySweep
from aias.services.artifacts.domain import (
    DEFAULT_INLINE_BYTES,
    MAX_CHUNK_BYTES,
    MAX_INLINE_BYTES,
)
from aias.services.artifacts.metrics import ArtifactMetrics
from aias.services.artifacts.quota import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_LINGER_SECONDS,
    StorageQuota,
)
from aias.services.artifacts.runs import RunOwners
from aias.services.artifacts.s3settings import (
    DEFAULT_PART_BYTES,
    MAX_COPY_BYTES,
    MIN_PART_BYTES,
    S3Location,
    S3Settings,
)
from aias.services.artifacts.service import ArtifactsService
from aias.services.artifacts.servicer import ArtifactsServicer, add_to_server
from aias.services.artifacts.sweeper import SweepConfig, Sweeper, SweepMetrics

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ArtifactsService"].full_name


@dataclass(frozen=True)
class ArtifactsSettings:
    server: ServerSettings
    database_url: str
    blob_root: Path
    tenancy_addr: str
    execution_addr: str
    entitlements_ttl: float = 30.0
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # Blobs go to this bucket when set, else to files under blob_root.
    s3: S3Settings | None = None
    # An upload untouched this long was abandoned; the sweep removes what it left.
    temp_max_age_seconds: float = 3600.0
    temp_sweep_seconds: float = 600.0
    # Storage reserved at tenancy in blocks of this many bytes while a tenant's uploads
    # overlap or follow each other; 0 reserves each upload's bytes on their own.
    storage_block_bytes: int = DEFAULT_BLOCK_BYTES
    # What a block left over goes back this long after the tenant's last upload ended.
    storage_linger_seconds: float = DEFAULT_LINGER_SECONDS
    # Content stored in one message up to this size is kept in the database (0: none is).
    inline_bytes: int = DEFAULT_INLINE_BYTES


# Below a second the sweeper's cross-tenant queries would run back to back for nothing.
MIN_SWEEP_INTERVAL = 1.0


def load_settings(env: Env | None = None) -> ArtifactsSettings:
    env = env or Env()
    data_dir = Path(env.text("AIAS_DATA_DIR", ".data"))
    settings = ArtifactsSettings(
        server=ServerSettings.from_env(env, "artifacts", 50053, 9103),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
        blob_root=Path(env.text("AIAS_ARTIFACTS_DIR", str(data_dir / "artifacts"))).absolute(),
        tenancy_addr=env.address("AIAS_TENANCY_ADDR"),
        execution_addr=env.address("AIAS_EXECUTION_ADDR"),
        entitlements_ttl=env.number("AIAS_ENTITLEMENTS_CACHE_SECONDS", 30.0),
        sweep=SweepConfig(
            interval_seconds=env.number(
                "AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS", 300.0, minimum=MIN_SWEEP_INTERVAL
            ),
            batch=env.integer("AIAS_ARTIFACTS_SWEEP_BATCH", 500, minimum=1, maximum=10_000),
            blob_grace=timedelta(
                seconds=env.number("AIAS_ARTIFACTS_BLOB_GRACE_SECONDS", 900.0, minimum=0.0)
            ),
        ),
        s3=_s3_settings(env),
        temp_max_age_seconds=env.number("AIAS_ARTIFACTS_TEMP_MAX_AGE_SECONDS", 3600.0, minimum=60),
        temp_sweep_seconds=env.number("AIAS_ARTIFACTS_TEMP_SWEEP_SECONDS", 600.0, minimum=1),
        storage_block_bytes=env.integer(
            "AIAS_ARTIFACTS_STORAGE_BLOCK_BYTES", DEFAULT_BLOCK_BYTES, minimum=0, maximum=1 << 40
        ),
        storage_linger_seconds=env.number(
            "AIAS_ARTIFACTS_STORAGE_LINGER_SECONDS",
            DEFAULT_LINGER_SECONDS,
            minimum=0.0,
        ),
        inline_bytes=env.integer(
            "AIAS_ARTIFACTS_INLINE_BYTES",
            DEFAULT_INLINE_BYTES,
            minimum=0,
            maximum=MAX_INLINE_BYTES,
        ),
    )
    env.check()
    return settings


def _s3_settings(env: Env) -> S3Settings | None:
    """The bucket of `AIAS_ARTIFACTS_STORE=s3://bucket/prefix` and the usual AWS variables."""
    store = env.text("AIAS_ARTIFACTS_STORE", "")
    if not store:
        return None
    try:
        location = S3Location.parse(store)
    except ValueError as error:
        env.problem(
            f"AIAS_ARTIFACTS_STORE {error} (unset, blobs go under AIAS_ARTIFACTS_DIR instead)"
        )
        return None
    endpoint = env.text("AWS_ENDPOINT_URL_S3", env.text("AWS_ENDPOINT_URL", "")) or None
    if endpoint and (
        urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc
    ):
        env.problem(
            f"AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL must be an http(s) URL, got {endpoint!r}"
        )
    key_id = env.text("AWS_ACCESS_KEY_ID", "") or None
    secret = env.text("AWS_SECRET_ACCESS_KEY", "") or None
    if (key_id is None) != (secret is None):
        env.problem("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set together or not at all")
    return S3Settings(
        location=location,
        endpoint_url=endpoint,
        region=env.text("AWS_REGION", env.text("AWS_DEFAULT_REGION", "us-east-1")),
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=env.text("AWS_SESSION_TOKEN", "") or None,
        part_bytes=env.integer(
            "AIAS_ARTIFACTS_S3_PART_BYTES",
            DEFAULT_PART_BYTES,
            minimum=MIN_PART_BYTES,
            maximum=MAX_COPY_BYTES,
        ),
    )


def build_store(settings: ArtifactsSettings) -> BlobStore:
    """The configured backend: the S3 bucket, or the local directory."""
    if settings.s3 is not None:
        # Imported only when configured: botocore's service models cost some 18 MiB of memory,
        # which a filesystem-backed process keeps for its downloads.
        from aias.services.artifacts.s3store import S3BlobStore

        return S3BlobStore(settings.s3)
    return FilesystemBlobStore(settings.blob_root)


async def build_server(settings: ArtifactsSettings) -> BuiltServer:
    """The composition root: engine, blob store, channels, use cases, servicer, server."""
    blobs = build_store(settings)
    await blobs.prepare()
    registry = CollectorRegistry()
    db = Database(create_engine(settings.database_url, name="artifacts"))
    tenancy = internal_channel(settings.tenancy_addr, settings.server.internal_token)
    entitlements = EntitlementsCache(tenancy, settings.entitlements_ttl)
    execution = internal_channel(settings.execution_addr, settings.server.internal_token)
    usage = UsageClient(tenancy)
    quota = StorageQuota(usage, settings.storage_block_bytes, settings.storage_linger_seconds)
    service = ArtifactsService(
        db,
        blobs,
        entitlements,
        usage,
        RunOwners(execution, ticket_key(settings.server.internal_token)),
        ArtifactMetrics(registry),
        quota,
        settings.inline_bytes,
    )
    servicer = ArtifactsServicer(service)
    abandoned = TemporarySweep(blobs, settings.temp_max_age_seconds, settings.temp_sweep_seconds)
    built = build_grpc_server(
        settings.server,
        [
            Registration(
                SERVICE_NAME,
                lambda server: add_to_server(servicer, server),
            ),
        ],
        registry,
    )
    sweeper = Sweeper(service, settings.sweep, SweepMetrics(built.metrics.registry))
    built.on_start += [entitlements.start, sweeper.start, abandoned.start]
    built.add_database(db)
    # Cleanups run last-registered first: the sweeps stop before anything they use closes.
    built.on_stop += [
        blobs.close,
        db.close,
        execution.close,
        tenancy.close,
        quota.close,  # gives back held storage through tenancy, so before its channel closes
        entitlements.stop,
        sweeper.stop,
        abandoned.stop,
    ]
    return built


# An upload's messages (up to MAX_CHUNK_BYTES each, a few received ahead) come from the heap,
# which keeps room for them between messages, rather than each being a mapping of its own,
# zeroed and unmapped: per 100 MiB uploaded in 1 MiB chunks, 33,700 minor page faults before,
# 2,850 after. `heap.after_transfer` gives the room back once the upload has ended.
UPLOAD_HEAP = HeapThresholds(mmap_bytes=MAX_CHUNK_BYTES + 64 * 1024, trim_bytes=4 * 1024 * 1024)


def main() -> None:
    run_main(load_settings, build_server, UPLOAD_HEAP)


if __name__ == "__main__":
    main()
