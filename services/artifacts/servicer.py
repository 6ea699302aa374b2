"""gRPC protocol layer of artifacts: proto <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as pb_grpc
from aias.core.context import HTTP_CODE, HTTP_HEADER_PREFIX, forwarded_header, require_tenant
from aias.core.errors import InvalidArgument
from aias.core.process import heap
from aias.core.protoconv import timestamp
from aias.core.wire import length_delimited, length_delimited_fields
from aias.services.artifacts.domain import (
    Answer,
    Artifact,
    DownloadRequest,
    UploadSpec,
    content_disposition,
    entity_tag,
)
from aias.services.artifacts.service import ArtifactsService

_HTTP_STATUS = {Answer.FULL: "200", Answer.PARTIAL: "206", Answer.NOT_MODIFIED: "304"}


def artifact_pb(artifact: Artifact) -> pb.Artifact:
    return pb.Artifact(
        id=str(artifact.id),
        run_id=str(artifact.run_id),
        workflow_id=str(artifact.workflow_id or ""),
        step_id=artifact.step_id,
        name=artifact.name,
        media_type=artifact.media_type,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        create_time=timestamp(artifact.create_time),
        expire_time=timestamp(artifact.expire_time),
    )


@dataclass(frozen=True)
class UploadMessage:
    """One UploadArtifact message read from its wire bytes (see `aias.core.wire`): the chunk is
    a view of the bytes gRPC received, not the two copies the generated parser would make.

    `payload` is what `WhichOneof("payload")` says of the same bytes.
    """

    payload: str | None
    metadata: pb.UploadArtifactMetadata
    chunk: memoryview

    @classmethod
    def parse(cls, wire: bytes) -> UploadMessage:
        empty = memoryview(b"")
        payload, metadata, chunk = None, pb.UploadArtifactMetadata(), empty
        try:
            # As in a oneof, each member clears the other; a message sent twice merges.
            for number, value in length_delimited_fields(wire):
                if number == 1:
                    if payload != "metadata":
                        metadata = pb.UploadArtifactMetadata()
                    metadata.MergeFromString(bytes(value))
                    payload, chunk = "metadata", empty
                elif number == 2:
                    payload, metadata, chunk = "chunk", pb.UploadArtifactMetadata(), value
        except (ValueError, DecodeError) as error:
            # Raised where the servicer reads the stream, so the caller gets this status.
            raise InvalidArgument(
                "MALFORMED_MESSAGE",
                f"an upload message is not a valid UploadArtifactRequest: {error}",
            ) from None
        return cls(payload, metadata, chunk)


class _Chunks:
    """An upload's chunks, after its metadata, counted as they arrive."""

    def __init__(self, messages: AsyncIterator[UploadMessage]) -> None:
        self._messages = messages
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        async for message in self._messages:
            if message.payload != "chunk":
                raise InvalidArgument(
                    "UPLOAD_CHUNK_EXPECTED",
                    "after the metadata, every upload message must be a chunk",
                )
            self.size += len(message.chunk)
            yield message.chunk


def http_body_wire(data: bytes, content_type: str = "") -> bytes:
    """A google.api.HttpBody's wire bytes: `content_type` (field 1) and `data` (field 2).

    Downloads are most of this service's bytes: building the message and serializing it would
    copy each chunk twice; this copies it once.
    """
    parts = []
    if content_type:
        parts += length_delimited(1, content_type.encode())
    if data:
        parts += length_delimited(2, data)
    return b"".join(parts)


def _already_serialized(message: bytes) -> bytes:
    """DownloadArtifact's messages leave the servicer as wire bytes."""
    return message


class _Registrations:
    """Stands in for the server to catch the generated registration's handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The generic handler is rebuilt from the same handlers in `add_to_server`."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_to_server(servicer: ArtifactsServicer, server: grpc.aio.Server) -> None:
    """The generated `add_ArtifactsServiceServicer_to_server`, but DownloadArtifact's responses
    are the wire bytes the servicer builds (`http_body_wire`), passed on as they are, and
    UploadArtifact's requests are read as `UploadMessage`s."""
    caught = _Registrations()
    pb_grpc.add_ArtifactsServiceServicer_to_server(servicer, caught)
    download = caught.handlers["DownloadArtifact"]
    upload = caught.handlers["UploadArtifact"]
    handlers = {
        **caught.handlers,
        "DownloadArtifact": download._replace(response_serializer=_already_serialized),
        "UploadArtifact": upload._replace(request_deserializer=UploadMessage.parse),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(caught.service, handlers),)
    )
    server.add_registered_method_handlers(caught.service, handlers)


def _spec(metadata: pb.UploadArtifactMetadata) -> UploadSpec:
    return UploadSpec(
        run_id=metadata.run_id,
        workflow_id=metadata.workflow_id,
        step_id=metadata.step_id,
        name=metadata.name,
        media_type=metadata.media_type,
        retention_days=metadata.retention_days,
        run_ticket=metadata.run_ticket,
    )


class ArtifactsServicer(pb_grpc.ArtifactsServiceServicer):
    def __init__(self, service: ArtifactsService) -> None:
        self._service = service

    async def UploadArtifact(  # type: ignore[override]  # parsed as UploadMessage: see add_to_server
        self,
        request_iterator: AsyncIterable[UploadMessage],  # see add_to_server
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadArtifactResponse:
        tenant_id = require_tenant()
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.payload != "metadata":
            raise InvalidArgument(
                "UPLOAD_METADATA_FIRST", "the first message of an upload must carry the metadata"
            )
        chunks = _Chunks(messages)
        try:
            artifact = await self._service.upload(tenant_id, _spec(first.metadata), chunks)
        finally:
            heap.after_transfer(chunks.size)
        return pb.UploadArtifactResponse(artifact=artifact_pb(artifact))

    async def StoreArtifact(
        self, request: pb.StoreArtifactRequest, context: grpc.aio.ServicerContext
    ) -> pb.StoreArtifactResponse:
        artifact = await self._service.store(
            require_tenant(), _spec(request.metadata), request.content
        )
        return pb.StoreArtifactResponse(artifact=artifact_pb(artifact))

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetArtifactResponse:
        artifact = await self._service.get_artifact(require_tenant(), request.artifact_id)
        return pb.GetArtifactResponse(artifact=artifact_pb(artifact))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListArtifactsResponse:
        page = await self._service.list_artifacts(
            require_tenant(),
            request.run_id,
            request.workflow_id,
            request.page_size,
            request.page_token,
        )
        return pb.ListArtifactsResponse(
            artifacts=[artifact_pb(artifact) for artifact in page.artifacts],
            next_page_token=page.next_page_token,
        )

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteArtifactResponse:
        await self._service.delete_artifact(require_tenant(), request.artifact_id)
        return pb.DeleteArtifactResponse()

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:  # HttpBody wire bytes: see add_to_server
        metadata = context.invocation_metadata()
        wanted = DownloadRequest(
            offset=request.offset,
            length=request.length,
            range_header=forwarded_header(metadata, "range"),
            if_range=forwarded_header(metadata, "if-range"),
            if_none_match=forwarded_header(metadata, "if-none-match"),
        )
        async with self._service.download(
            require_tenant(), request.artifact_id, wanted
        ) as download:
            artifact, plan = download.artifact, download.plan
            headers = {
                "etag": entity_tag(artifact.sha256),
                "accept-ranges": "bytes",
                "content-disposition": content_disposition(artifact.name),
            }
            if plan.answer is not Answer.NOT_MODIFIED:
                headers["content-length"] = str(plan.window.length)
            if plan.answer is Answer.PARTIAL:
                headers["content-range"] = plan.window.content_range(artifact.size_bytes)
            await context.send_initial_metadata(
                (
                    (HTTP_CODE, _HTTP_STATUS[plan.answer]),
                    *((f"{HTTP_HEADER_PREFIX}{name}", value) for name, value in headers.items()),
                )
            )
            if plan.answer is Answer.NOT_MODIFIED:
                return
            # Only the first message names the type; an empty body still sends that one.
            content_type = artifact.media_type
            sent = 0
            try:
                async for chunk in download.chunks():
                    yield http_body_wire(chunk, content_type)
                    content_type = ""
                    sent += len(chunk)
            finally:
                heap.after_transfer(sent)
            if content_type:
                yield http_body_wire(b"", content_type)
