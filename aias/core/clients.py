"""Channels to other AIAS services that carry the internal credential, and their errors' reasons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from aias.core.context import AUTHORIZATION, current_caller_metadata
from aias.core.tracing import client_interceptors

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The most calls a batch RPC (`aias.api.v1.batch`) takes at once.
MAX_BATCH_CALLS = 512

# A fixed flow-control window per stream bounds what one call buffers: with gRPC's bandwidth
# probing the window grew until a 200 MiB artifact stream held 25-30 MiB more in each hop.
# 1 MiB ahead keeps two 512 KiB download messages in flight and still fills a link of 10 ms
# round trip at 100 MB/s.
STREAM_WINDOW_OPTIONS = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Every address a name resolves to gets calls in turn (`dns:///execution:50052` names all
    # replicas); gRPC's default would send everything to the first.
    ("grpc.lb_policy_name", "round_robin"),
    *STREAM_WINDOW_OPTIONS,
]


class _ContextMixin:
    """Adds the bearer token, and the current request id and tenant unless the call sets them."""

    def __init__(self, token: str) -> None:
        self._auth = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        present = {key for key, _ in metadata}
        metadata += [pair for pair in current_caller_metadata() if pair[0] not in present]
        metadata.append(self._auth)
        return details._replace(metadata=grpc.aio.Metadata(*metadata))

    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


# grpc.aio files each interceptor under the first call kind it implements, so one class per kind.
class _UnaryUnary(_ContextMixin, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _ContextMixin._call


class _UnaryStream(_ContextMixin, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _ContextMixin._call


class _StreamUnary(_ContextMixin, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _ContextMixin._call


class _StreamStream(_ContextMixin, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _ContextMixin._call


def internal_channel(address: str, token: str) -> grpc.aio.Channel:
    """An insecure channel for the private network; TLS with client certificates is the
    production option and replaces only this function."""
    return grpc.aio.insecure_channel(
        address,
        options=_CHANNEL_OPTIONS,
        interceptors=[
            *client_interceptors(),
            *(kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)),
        ],
    )


def error_info(metadata: Any) -> tuple[str, str, dict[str, str]] | None:
    """The (reason, message, metadata) of the ErrorInfo in a failed call's trailing metadata."""
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason, status.message, dict(info.metadata)
    return None
