"""Artifacts process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine
from aias.core.entitlements import EntitlementsCache, UsageClient
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.settings import Env, ServerSettings
from services.artifacts.blobstore import FilesystemBlobStore
from services.artifacts.runs import RunOwners
from services.artifacts.service import ArtifactsService
from services.artifacts.servicer import ArtifactsServicer
from services.artifacts.sweeper import SweepConfig, Sweeper, SweepMetrics

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
    )
    env.check()
    return settings


async def build_server(settings: ArtifactsSettings) -> BuiltServer:
    """The composition root: engine, blob store, channels, use cases, servicer, server."""
    blobs = FilesystemBlobStore(settings.blob_root)
    await blobs.prepare()
    db = Database(create_engine(settings.database_url))
    tenancy = internal_channel(settings.tenancy_addr, settings.server.internal_token)
    entitlements = EntitlementsCache(tenancy, settings.entitlements_ttl)
    execution = internal_channel(settings.execution_addr, settings.server.internal_token)
    service = ArtifactsService(db, blobs, entitlements, UsageClient(tenancy), RunOwners(execution))
    servicer = ArtifactsServicer(service)
    built = build_grpc_server(
        settings.server,
        [
            Registration(
                SERVICE_NAME,
                lambda server: pb_grpc.add_ArtifactsServiceServicer_to_server(servicer, server),
            ),
        ],
    )
    sweeper = Sweeper(service, settings.sweep, SweepMetrics(built.metrics.registry))
    built.on_start += [entitlements.start, sweeper.start]
    built.add_database(db)
    # Cleanups run last-registered first: the sweeper stops before anything it uses closes.
    built.on_stop += [db.close, execution.close, tenancy.close, entitlements.stop, sweeper.stop]
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
