"""Tenancy process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass

from aias.core.db import Database, create_engine, libpq_url
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.settings import Env, ServerSettings
from aias.services.tenancy.changes import ChangeHub
from aias.services.tenancy.service import TenancyService
from aias.services.tenancy.servicer import TenancyServicer
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TenancyService"].full_name


@dataclass(frozen=True)
class TenancySettings:
    server: ServerSettings
    database_url: str


def load_settings(env: Env | None = None) -> TenancySettings:
    env = env or Env()
    settings = TenancySettings(
        server=ServerSettings.from_env(env, "tenancy", 50051, 9101),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
    )
    env.check()
    return settings


async def build_server(settings: TenancySettings) -> BuiltServer:
    """The composition root: engine, change hub, use cases, servicer, gRPC server."""
    db = Database(create_engine(settings.database_url, name="tenancy"))
    changes = ChangeHub(libpq_url(settings.database_url))
    servicer = TenancyServicer(TenancyService(db), changes)
    built = build_grpc_server(
        settings.server,
        [
            Registration(
                SERVICE_NAME, lambda s: pb_grpc.add_TenancyServiceServicer_to_server(servicer, s)
            ),
        ],
    )
    built.on_start.append(changes.start)
    built.on_draining.append(changes.close)
    built.add_database(db)
    built.on_stop.append(db.close)
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
