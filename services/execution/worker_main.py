"""Execution-worker process: claim and run queued runs; serves health and metrics only."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import timedelta

from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine, libpq_url
from aias.core.destinations import ALLOW_SETTING, AddressPolicy
from aias.core.entitlements import EntitlementsCache
from aias.core.grpc_server import BuiltServer, build_grpc_server, run_main
from aias.core.settings import Env, ServerSettings
from aias.core.tickets import ticket_key
from aias.services.execution.metrics import QueueSampler, RunMetrics
from aias.services.execution.sandbox import StepRunner
from aias.services.execution.worker import STORE_BYTES, Worker, WorkerConfig, new_worker_id

MIB = 2**20
# Runs one worker holds: more than its step processes, so claims and writes come in batches
# while steps wait their turn (by tenant) for a process.
DEFAULT_CONCURRENCY = 16
# Steps are computation: a few processes fill the cores a worker shares with ingest.
DEFAULT_STEP_PROCESSES = 4
# The claim loop, the ledger and reads of workflow versions: a few connections at any concurrency.
MAX_CONNECTIONS = 8


@dataclass(frozen=True)
class WorkerSettings:
    server: ServerSettings
    database_url: str
    artifacts_addr: str
    tenancy_addr: str
    worker: WorkerConfig
    step_processes: int
    step_memory_bytes: int
    entitlements_ttl: float = 30.0
    # The scheduling priority the worker (and its step processes) yield to ingest with.
    nice: int = 0


def load_settings(env: Env | None = None) -> WorkerSettings:
    env = env or Env()
    concurrency = env.integer(
        "AIAS_WORKER_CONCURRENCY", DEFAULT_CONCURRENCY, minimum=1, maximum=256
    )
    settings = WorkerSettings(
        server=ServerSettings.from_env(env, "execution-worker", 50055, 9105),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
        artifacts_addr=env.address("AIAS_ARTIFACTS_ADDR"),
        tenancy_addr=env.address("AIAS_TENANCY_ADDR"),
        worker=WorkerConfig(
            worker_id=env.text("AIAS_WORKER_ID", new_worker_id()),
            concurrency=concurrency,
            claim_batch=env.integer("AIAS_WORKER_CLAIM_BATCH", 32, minimum=1, maximum=1024),
            claim_interval=env.number("AIAS_WORKER_CLAIM_INTERVAL_SECONDS", 0.02, minimum=0.0),
            lease=timedelta(seconds=env.number("AIAS_WORKER_LEASE_SECONDS", 30.0, minimum=1.0)),
            poll_interval=env.number("AIAS_WORKER_POLL_SECONDS", 5.0, minimum=0.05),
            retry_base=env.number("AIAS_RETRY_BASE_SECONDS", 2.0),
            retry_max=env.number("AIAS_RETRY_MAX_SECONDS", 300.0),
            step_timeout=env.number("AIAS_STEP_TIMEOUT_SECONDS", 60.0, minimum=0.1),
            step_output_bytes=env.integer(
                "AIAS_STEP_OUTPUT_BYTES", 16 * MIB, minimum=1024, maximum=2**31
            ),
            http_allow=env.parsed(ALLOW_SETTING, AddressPolicy.parse, AddressPolicy()),
            store_bytes=env.integer(
                "AIAS_WORKER_STORE_ARTIFACT_BYTES", STORE_BYTES, minimum=0, maximum=STORE_BYTES
            ),
        ),
        step_processes=env.integer(
            "AIAS_STEP_PROCESSES",
            min(concurrency, DEFAULT_STEP_PROCESSES),
            minimum=1,
            maximum=256,
        ),
        # Below 64 MiB the interpreter and the step libraries alone would not fit.
        step_memory_bytes=env.integer(
            "AIAS_STEP_MEMORY_BYTES", 256 * MIB, minimum=64 * MIB, maximum=2**40
        ),
        entitlements_ttl=env.number("AIAS_ENTITLEMENTS_CACHE_SECONDS", 30.0),
        nice=env.integer("AIAS_WORKER_NICE", DEFAULT_NICE, minimum=0, maximum=19),
    )
    env.check()
    return settings


# On a machine shared with the gateway and execution, the worker takes the CPU they leave:
# a webhook's 202 waits on the CPU, a queued run only on its turn (see README, "CPU sharing").
DEFAULT_NICE = 10
# The queue's statements walk `runs_queued` in order and stop after a few entries. The table
# fills and drains in seconds, so its statistics are often stale, and a planner that believes
# the queue is nearly empty picks a bitmap scan that reads a whole backlog and sorts it; the
# worker's statements are all index walks or lookups by key, so its connections go without.
QUEUE_SETTINGS = {"enable_bitmapscan": "off"}


async def build_server(settings: WorkerSettings) -> BuiltServer:
    """The composition root: engine, channels, entitlements, step pool, worker, health server."""
    if settings.nice:
        os.nice(settings.nice)  # before the step processes start: they inherit it
    db = Database(
        create_engine(
            settings.database_url,
            name="worker",
            max_connections=MAX_CONNECTIONS,
            settings=QUEUE_SETTINGS,
        )
    )
    artifacts = internal_channel(settings.artifacts_addr, settings.server.internal_token)
    tenancy = internal_channel(settings.tenancy_addr, settings.server.internal_token)
    entitlements = EntitlementsCache(tenancy, settings.entitlements_ttl)
    steps = StepRunner(settings.step_processes, settings.step_memory_bytes)
    built = build_grpc_server(settings.server, [])
    # On the process's metrics port, beside its RPC metrics.
    metrics = RunMetrics(built.metrics.registry)
    sampler = QueueSampler(db, metrics, entitlements.peek)
    worker = Worker(
        db,
        libpq_url(settings.database_url),
        artifacts_grpc.ArtifactsServiceStub(artifacts),
        entitlements,
        steps,
        replace(settings.worker, ticket_key=ticket_key(settings.server.internal_token)),
        metrics,
    )
    built.on_start += [entitlements.start, steps.start, worker.start, sampler.start]

    async def stop_worker() -> None:
        await worker.stop(settings.server.grace_seconds)

    # Cleanups run last-registered first: the worker releases its runs before anything closes.
    built.add_database(db)
    built.on_stop += [
        db.close,
        artifacts.close,
        tenancy.close,
        entitlements.stop,
        steps.close,
        stop_worker,
        sampler.stop,
    ]
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
