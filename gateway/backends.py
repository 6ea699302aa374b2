"""The backend services: which protos each serves, where it listens, one channel to each."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aias.artifacts.v1 import artifacts_service_pb2
from aias.billing.v1 import billing_service_pb2
from aias.core.clients import internal_channel
from aias.core.version import VERSION_METADATA
from aias.execution.v1 import execution_service_pb2
from aias.tenancy.v1 import tenancy_service_pb2


@dataclass(frozen=True)
class BackendSpec:
    """A backend: its name, the variable that holds its address and the protos it serves."""

    name: str
    address_variable: str
    file: FileDescriptor


# The one list of backends: every service of these files is routed to that backend.
BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("tenancy", "AIAS_TENANCY_ADDR", tenancy_service_pb2.DESCRIPTOR),
    BackendSpec("execution", "AIAS_EXECUTION_ADDR", execution_service_pb2.DESCRIPTOR),
    BackendSpec("artifacts", "AIAS_ARTIFACTS_ADDR", artifacts_service_pb2.DESCRIPTOR),
    BackendSpec("billing", "AIAS_BILLING_ADDR", billing_service_pb2.DESCRIPTOR),
)


@dataclass(frozen=True)
class BackendHealth:
    """A backend's grpc.health.v1 state (or the failed call's code) and the version it reported."""

    state: str
    version: str


class Backends:
    """One channel per backend, opened together and closed together."""

    def __init__(self, addresses: Mapping[str, str], internal_token: str) -> None:
        self._channels = {
            name: internal_channel(address, internal_token) for name, address in addresses.items()
        }

    def channel(self, name: str) -> grpc.aio.Channel:
        return self._channels[name]

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))

    async def health(self, timeout_seconds: float) -> dict[str, str]:
        """Each backend's grpc.health.v1 state for the whole server, or the failed call's code."""
        checked = await self.check(timeout_seconds)
        return {name: found.state for name, found in checked.items()}

    async def check(self, timeout_seconds: float) -> dict[str, BackendHealth]:
        """Each backend's health state and version, asked of all of them at once."""

        async def ask(channel: grpc.aio.Channel) -> BackendHealth:
            call = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_seconds
            )
            try:
                reply = await call
                metadata = await call.initial_metadata()
            except grpc.aio.AioRpcError as error:
                return BackendHealth(str(error.code().name), "")
            version = dict(metadata or ()).get(VERSION_METADATA, "")
            state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return BackendHealth(str(state), str(version))

        names = list(self._channels)
        found = await asyncio.gather(*(ask(self._channels[name]) for name in names))
        return dict(zip(names, found, strict=True))
