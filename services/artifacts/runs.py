"""Which runs belong to which tenant, as execution knows them, so an upload names a real run:
from the run ticket the upload carries (aias.core.tickets), or else by asking execution."""

from __future__ import annotations

import uuid

import grpc

from aias.core.cache import TtlCache
from aias.core.errors import NotFound, PermissionDenied, Unavailable
from aias.core.tickets import valid_ticket
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.execution.v1 import execution_service_pb2_grpc as execution_grpc

_TIMEOUT_SECONDS = 5.0


class RunOwners:
    """Asks execution whether a run is the tenant's, and its workflow; an answer is kept, since
    runs never move."""

    def __init__(
        self, channel: grpc.aio.Channel, ticket_key: bytes, max_entries: int = 100_000
    ) -> None:
        self._stub = execution_grpc.ExecutionServiceStub(channel)
        self._ticket_key = ticket_key
        self._known: TtlCache[tuple[uuid.UUID, uuid.UUID], uuid.UUID] = TtlCache(
            3600.0, max_entries
        )

    async def workflow_of(
        self,
        tenant_id: uuid.UUID,
        run_id: uuid.UUID,
        workflow_id: uuid.UUID | None = None,
        ticket: str = "",
    ) -> uuid.UUID:
        """The run's workflow when the run exists for the tenant; NotFound otherwise.

        With a ticket, `workflow_id` is the answer if the ticket vouches for it (and the
        tenant and run); PermissionDenied if it does not.
        """
        if ticket:
            if workflow_id is None or not valid_ticket(
                self._ticket_key, ticket, tenant_id, run_id, workflow_id
            ):
                raise PermissionDenied(
                    "INVALID_RUN_TICKET",
                    f"the run ticket is not execution's for run {run_id} of workflow "
                    f"{workflow_id} and this tenant",
                )
            return workflow_id
        if (known := self._known.get((tenant_id, run_id))) is not None:
            return known
        try:
            reply = await self._stub.GetRun(
                execution_pb.GetRunRequest(run_id=str(run_id)),
                metadata=(("x-aias-tenant-id", str(tenant_id)),),
                timeout=_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    "RUN_NOT_FOUND", f"run {run_id} does not exist for this tenant"
                ) from None
            raise Unavailable(
                "EXECUTION_UNAVAILABLE", "the execution service did not answer; retry shortly"
            ) from None
        workflow_id = uuid.UUID(reply.run.workflow_id)
        self._known.put((tenant_id, run_id), workflow_id)
        return workflow_id
