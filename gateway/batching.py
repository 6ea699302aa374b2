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
ALONE_SECONDS = 60.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class _Waiting:
    request: Message
    metadata: list[tuple[str, str]]
    answer: asyncio.Future[Message]


class CallBatcher:
    """Batches the calls of one RPC through its batch RPC (`aias.api.v1.batch`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        route: RpcRoute,
        timeout_seconds: float,
        max_calls: int = DEFAULT_MAX_CALLS,
        in_flight: int = DEFAULT_BATCHES_IN_FLIGHT,
    ) -> None:
        assert route.batch is not None
        batch = route.batch
        self._send_batch = channel.unary_unary(
            batch.rpc,
            request_serializer=batch.request_class.SerializeToString,
            response_deserializer=batch.response_class.FromString,
        )
        # For a backend that does not serve the batch RPC yet (one older than the gateway).
        self._send_alone = channel.unary_unary(
            route.rpc,
            request_serializer=route.request_class.SerializeToString,
            response_deserializer=route.response_class.FromString,
        )
        self._alone_until = 0.0
        self._batch = batch
        self._timeout = timeout_seconds
        self._max_calls = max_calls
        self._in_flight = in_flight
        self._out = 0
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, rpc: str, request: Message, metadata: list[tuple[str, str]]) -> Message:
        """The response to `request`, sent with the next batch; raises its AioRpcError."""
        if time.monotonic() < self._alone_until:
            return await self._alone(request, metadata)
        with client_span(rpc, metadata):
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
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    await self._send_each_alone(calls)
                    return
                for call in calls:
                    _answer(call, error)
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

    async def _send_each_alone(self, calls: Sequence[_Waiting]) -> None:
        """During a rolling upgrade a backend may not serve the batch RPC yet: its calls go one
        by one, and so do new ones for a while, after which batches are tried again."""
        if time.monotonic() >= self._alone_until:
            log.warning(
                "the backend does not serve the batch RPC; sending calls one by one for a while",
                extra={"rpc": self._batch.rpc, "seconds": ALONE_SECONDS},
            )
        self._alone_until = time.monotonic() + ALONE_SECONDS

        async def alone(call: _Waiting) -> None:
            try:
                _answer(call, await self._alone(call.request, call.metadata))
            except grpc.aio.AioRpcError as error:
                _answer(call, error)

        await asyncio.gather(*(alone(call) for call in calls))

    async def _alone(self, request: Message, metadata: list[tuple[str, str]]) -> Message:
        response: Message = await self._send_alone(
            request, metadata=metadata, timeout=self._timeout
        )
        return response


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
