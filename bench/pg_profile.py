"""Where PostgreSQL's time goes per webhook: statements and server CPU, by the process asking.

Starts the suite on ephemeral ports with its own embedded PostgreSQL, with `pg_stat_statements`
loaded (AIAS_EMBEDDED_PG_SETTINGS), drives webhooks at 64 connections with `wrk`, or at a fixed
rate with `--rate` (the open-loop generator of `bench.ingest`), the worker running as in
`bench.ingest`, and prints per accepted webhook:

- each statement's calls and execution time (`pg_stat_statements`, nested statements such as
  triggers' and foreign-key checks' included, so times overlap);
- the CPU of the server's backends, grouped by the connection's `application_name` (each process
  names its connections: `aias-execution`, `aias-worker`, ...), and of every process.

The statistics extension costs some throughput itself: read the shares, not the req/s; for
throughput and its baselines, `bench.ingest` and `bench.compare`. This is the profile that
bench/README.md's "The database's side, and the worker's" quotes.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from aias.core.launcher import Stack
from bench.common import cpu_seconds, machine, new_hook, print_machine, suite, write_json
from bench.ingest import openloop, wrk

SERVER_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements pg_stat_statements.track=all "
    "pg_stat_statements.track_planning=on"
)
TOP_STATEMENTS = 15


def _superuser(stack: Stack) -> Engine:
    if stack.database.embedded is None:
        raise SystemExit("bench.pg_profile needs the embedded PostgreSQL (unset AIAS_DATABASE_URL)")
    return create_engine(stack.database.superuser_url(), isolation_level="AUTOCOMMIT")


def _backend_cpu(engine: Engine) -> dict[str, float]:
    """CPU seconds so far of each server backend, summed by application (or backend type)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT pid, application_name, backend_type FROM pg_stat_activity")
        ).all()
    used: dict[str, float] = {}
    for pid, application, backend_type in rows:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        key = application or backend_type
        used[key] = used.get(key, 0.0) + times.user + times.system
    return used


def measure(seconds: float, rate: float | None = None) -> dict[str, Any]:
    with suite({"AIAS_EMBEDDED_PG_SETTINGS": SERVER_SETTINGS}) as stack:
        hook = asyncio.run(new_hook(stack.gateway_url, stack.admin_token))
        url = stack.gateway_url + hook.path
        engine = _superuser(stack)
        with engine.connect() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        wrk(url, 16, 2)  # warm-up: caches, pools, the first blocks of reserved runs
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_stat_statements_reset()"))
        backends_before, processes_before = _backend_cpu(engine), cpu_seconds(stack)
        load = wrk(url, 64, seconds) if rate is None else openloop(url, rate, seconds)
        backends_after, processes_after = _backend_cpu(engine), cpu_seconds(stack)
        accepted = max(1, load["accepted"])
        with engine.connect() as connection:
            statements = connection.execute(
                text(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110), calls, "
                    "total_exec_time, total_plan_time, plans, rows FROM pg_stat_statements "
                    "WHERE query NOT LIKE '%pg_stat_%' "
                    "ORDER BY total_exec_time + total_plan_time DESC LIMIT :n"
                ),
                {"n": TOP_STATEMENTS},
            ).all()
        engine.dispose()

    def per_webhook_ms(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        spent = {
            key: (value - before.get(key, 0.0)) * 1000 / accepted for key, value in after.items()
        }
        return {key: round(value, 3) for key, value in spent.items() if value >= 0.001}

    return {
        "load": "wrk, 64 connections" if rate is None else f"open loop, {rate:g}/s offered",
        "webhooks": load,
        "statements": [
            {
                "query": query,
                "calls_per_webhook": round(calls / accepted, 3),
                "exec_us_per_webhook": round(exec_ms * 1000 / accepted, 1),
                "plans_per_webhook": round(plans / accepted, 3),
                "plan_us_per_webhook": round(plan_ms * 1000 / accepted, 1),
                "rows_per_call": round(rows / max(1, calls), 1),
            }
            for query, calls, exec_ms, plan_ms, plans, rows in statements
        ],
        "server_cpu_ms_per_webhook_by_application": per_webhook_ms(backends_after, backends_before),
        "cpu_ms_per_webhook_by_process": per_webhook_ms(processes_after, processes_before),
    }


def report(figures: dict[str, Any]) -> None:
    load = figures["webhooks"]
    speed = f"{load['per_second']:,.0f} req/s, " if "per_second" in load else ""
    print(
        f"webhooks, {figures['load']} (pg_stat_statements loaded): {speed}"
        f"{load['accepted']} accepted"
    )
    print(
        "per accepted webhook: calls | execution time | plans | planning time | rows per call "
        "| statement"
    )
    for row in figures["statements"]:
        print(
            f"  {row['calls_per_webhook']:6.3f} | {row['exec_us_per_webhook']:7.1f} µs | "
            f"{row['plans_per_webhook']:6.3f} | {row['plan_us_per_webhook']:7.1f} µs | "
            f"{row['rows_per_call']:6.1f} | {row['query']}"
        )
    print(
        f"server CPU ms per webhook by application: {figures['server_cpu_ms_per_webhook_by_application']}"
    )
    print(f"CPU ms per webhook by process: {figures['cpu_ms_per_webhook_by_process']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, help="offer this many webhooks a second (open loop), not wrk's"
    )
    parser.add_argument("--output", type=Path, help="write the JSON here, not to bench/results")
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    figures = measure(args.seconds, args.rate)
    report(figures)
    write_json("pg_profile", figures, args.output)


if __name__ == "__main__":
    main()
