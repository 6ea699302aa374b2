"""Sends the calls of one RPC that wait at the same moment as one call of its batch RPC.

A unary gRPC call costs about as much CPU in the gateway and in the backend as the work a
small webhook asks for (grpc.aio's call set-up, the interceptors on both sides, HTTP/2 frames).
Calls that arrive while the batches already sent are still out wait for the next one, so under
load a round trip carries many of them, and an idle gateway sends each at once: no timer adds
latency. Each caller gets what its own unary call would have given it: the response, or the
`AioRpcError` with the backend's status and details.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from aias.core.clients import STATUS_DETAILS_KEY
from aias.core.tracing import client_span
from aias.gateway.transcoder import RpcRoute

log = logging.getLogger(__name__)

# Batches out at once: while they are, new calls gather for the next one.
DEFAULT_BATCHES_IN_FLIGHT = 4
# Calls in one batch, at most.
DEFAULT_MAX_CALLS = 64
# How long calls go one by one after a backend answered that it has no batch RPC.
UNAVAILABLE_SECONDS = 60.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class _Waiting:
    request: Message
    metadata: list[tuple[str, str]]
    answer: asyncio.Future[Message]


class BatchUnavailable(Exception):
    """The backend does not serve the batch RPC (it is older than the gateway, during a rolling
    upgrade): the caller sends its call on its own."""


class CallBatcher:
    """Batches the calls of one route's RPC through its batch RPC (`aias.api.v1.batch`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        route: RpcRoute,
        timeout_seconds: float,
        max_calls: int = DEFAULT_MAX_CALLS,
        in_flight: int = DEFAULT_BATCHES_IN_FLIGHT,
    ) -> None:
        assert route.batch is not None
        self._rpc = route.rpc
        self._batch = route.batch
        self._send_batch = channel.unary_unary(
            self._batch.rpc,
            request_serializer=self._batch.request_class.SerializeToString,
            response_deserializer=self._batch.response_class.FromString,
        )
        self._timeout = timeout_seconds
        self._max_calls = max_calls
        self._in_flight = in_flight
        self._out = 0
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._unavailable_until = 0.0

    @property
    def available(self) -> bool:
        """False for a while after the backend answered that it has no batch RPC."""
        return time.monotonic() >= self._unavailable_until

    async def call(self, request: Message, metadata: list[tuple[str, str]]) -> Message:
        """The response to `request`, sent with the next batch; raises its AioRpcError, or
        BatchUnavailable when the call must go on its own."""
        # A copy: the span's trace context is this call's, not that of a call made instead.
        metadata = list(metadata)
        with client_span(self._rpc, metadata):
            loop = asyncio.get_running_loop()
            waiting = _Waiting(request, metadata, loop.create_future())
            self._waiting.append(waiting)
            if not self._scheduled:
                # The calls that arrive in this turn of the event loop leave together.
                self._scheduled = True
                loop.call_soon(self._send, context=contextvars.Context())
            # A caller that goes away leaves its call in the batch: the backend serves it anyway,
            # as it does a unary call whose client hung up after sending it.
            return await waiting.answer

    def _send(self) -> None:
        self._scheduled = False
        while self._waiting and self._out < self._in_flight:
            calls = self._waiting[: self._max_calls]
            del self._waiting[: self._max_calls]
            self._out += 1
            # No request's context: the batch carries each call's request id in its metadata.
            task = asyncio.create_task(self._round_trip(calls), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _round_trip(self, calls: Sequence[_Waiting]) -> None:
        try:
            message = self._batch.request_class(
                calls=[
                    self._batch.call_class(request=call.request, metadata=dict(call.metadata))
                    for call in calls
                ]
            )
            try:
                reply = await self._send_batch(message, timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                failure: BaseException = error
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._unavailable()
                    failure = BatchUnavailable()
                for call in calls:
                    _answer(call, failure)
                return
            outcomes = reply.outcomes
            if len(outcomes) != len(calls):
                log.error(
                    "a batch was answered with the wrong number of outcomes",
                    extra={"rpc": self._batch.rpc, "calls": len(calls), "got": len(outcomes)},
                )
                wrong = _rpc_error(
                    status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="bad batch")
                )
                for call in calls:
                    _answer(call, wrong)
                return
            for call, outcome in zip(calls, outcomes, strict=True):
                if outcome.HasField("error"):
                    _answer(call, _rpc_error(outcome.error))
                else:
                    _answer(call, outcome.response)
        finally:
            self._out -= 1
            if self._waiting and not self._scheduled:
                self._send()

    def _unavailable(self) -> None:
        """Calls go on their own for a while; then batches are tried again."""
        if self.available:
            log.warning(
                "the backend does not serve the batch RPC; sending calls one by one for a while",
                extra={"rpc": self._batch.rpc, "seconds": UNAVAILABLE_SECONDS},
            )
        self._unavailable_until = time.monotonic() + UNAVAILABLE_SECONDS


def _answer(call: _Waiting, result: Message | BaseException) -> None:
    if call.answer.done():
        return
    if isinstance(result, BaseException):
        call.answer.set_exception(result)
    else:
        call.answer.set_result(result)


def _rpc_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The error a unary call failing with `status` would have raised, details included."""
    return grpc.aio.AioRpcError(
        _CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString())),
        status.message,
    )
