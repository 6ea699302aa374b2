"""What one gRPC call costs on this machine: the calibration behind "count the RPCs per run".

A grpc.aio server with only the health service (on uvloop, as the services run) in its own
process, and a grpc.aio client here, `--calls` health checks with `--in-flight` at a time:
calls per second and the CPU time per call of the server and of the client. Beside it, the same
number of pipe round trips between two processes (a write that wakes the other, a one-byte
answer): what handing work to another process costs without gRPC. Prints the machine and the
figures, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.common import machine, print_machine, write_json


def _serve(ports: multiprocessing.Queue[int]) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await server.wait_for_termination()

    uvloop.run(main())


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _calls(port: int, server: psutil.Process, calls: int, in_flight: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):  # warm-up: the connection, the first allocations
            await stub.Check(health_pb2.HealthCheckRequest())
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await stub.Check(health_pb2.HealthCheckRequest())

        server_before, client_before = _cpu(server), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        elapsed = time.perf_counter() - started
        return {
            "calls": calls,
            "in_flight": in_flight,
            "per_second": round(calls / elapsed),
            "server_cpu_us_per_call": round((_cpu(server) - server_before) / calls * 1e6, 1),
            "client_cpu_us_per_call": round((time.process_time() - client_before) / calls * 1e6, 1),
        }


def grpc_calls(calls: int, in_flight: int) -> dict[str, Any]:
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    process.start()
    try:
        port = ports.get(timeout=30)
        return uvloop.run(_calls(port, psutil.Process(process.pid), calls, in_flight))
    finally:
        process.terminate()
        process.join()


def pipe_round_trips(count: int) -> dict[str, Any]:
    """A forked process answers each small write with one byte: the writer's CPU per write
    (each wakes the other process) and the round trips per second."""
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    child = os.fork()
    if child == 0:  # the forked reader
        os.close(requests_write)
        os.close(answers_read)
        while os.read(requests_read, 65536):
            os.write(answers_write, b"k")
        os._exit(0)
    os.close(requests_read)
    os.close(answers_write)
    message = b"x" * 1500
    write_cpu = 0.0
    started = time.perf_counter()
    for _ in range(count):
        before = time.thread_time()
        os.write(requests_write, message)
        write_cpu += time.thread_time() - before
        os.read(answers_read, 1)
    elapsed = time.perf_counter() - started
    os.close(requests_write)
    os.waitpid(child, 0)
    os.close(answers_read)
    return {
        "round_trips": count,
        "per_second": round(count / elapsed),
        "write_cpu_us": round(write_cpu / count * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--output", type=Path, help="write the JSON here, not to bench/results")
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    # The pipe first: its fork comes before this process has used gRPC.
    pipe = pipe_round_trips(args.calls)
    figures = {
        "grpc_health_check": grpc_calls(args.calls, args.in_flight),
        "baseline_pipe_round_trips": pipe,
    }
    rpc = figures["grpc_health_check"]
    print(
        f"gRPC health check, {rpc['in_flight']} in flight: {rpc['per_second']:,} calls/s; CPU "
        f"per call: server {rpc['server_cpu_us_per_call']} µs, client "
        f"{rpc['client_cpu_us_per_call']} µs"
    )
    print(
        f"baseline, pipe round trips between two processes: {pipe['per_second']:,}/s; the "
        f"writer's CPU per write (it wakes the other): {pipe['write_cpu_us']} µs"
    )
    write_json("rpc-cost", figures, args.output)


if __name__ == "__main__":
    main()
