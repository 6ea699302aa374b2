"""Webhook ingest: wrk at 16 and 64 connections, open-loop latency at fixed rates, memory.

Every figure is printed beside same-run baselines: a bare aiohttp server answering 202, and the
gateway's /healthz. The webhook tenant is on `enterprise` (no limits), so the path measured is
the full one (secret lookup, entitlements, quota reservation, commit) without refusals. After
the runs, the runs in the database must equal the 202s counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from aias.core.launcher import Stack
from bench.common import (
    cpu_seconds,
    ensure_wrk,
    machine,
    new_hook,
    print_machine,
    rss_mib,
    suite,
    uss_mib,
    write_json,
)

# How long the suite rests before its idle memory is read.
IDLE_AFTER_SECONDS = 8.0
# A 1.4 KB order, like a shop's webhook.
PAYLOAD = json.dumps(
    {
        "id": "order-1001",
        "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "items": [{"sku": f"SKU-{n:04d}", "qty": n % 3 + 1, "price": 9.5 + n} for n in range(20)],
        "note": "x" * 380,
    }
)
_POST = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""
_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_ms": %.2f, "p99_ms": %.2f, "p999_ms": %.2f}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
"""


def wrk(url: str, connections: int, seconds: float, post: bool = True) -> dict[str, Any]:
    """One wrk run (2 threads); the figures come from its Lua `done` hook as JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if post:
            script.write(_POST.format(body=json.dumps(PAYLOAD)))
        script.write(_DONE)
    output = subprocess.run(
        [
            ensure_wrk(),
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script.name).unlink()
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    figures["per_second"] = round(figures["requests"] / figures["seconds"], 1)
    figures["accepted"] = figures["requests"] - figures["non2xx"]
    return figures


def openloop(url: str, rate: float, seconds: float) -> dict[str, Any]:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.openloop",
            url,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--body",
            PAYLOAD,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, Any] = json.loads(output)
    return figures


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bare_baseline(connections: int, seconds: float) -> dict[str, Any]:
    """wrk against a bare aiohttp server on this machine, in its own process."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.bare", "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        return wrk(f"http://127.0.0.1:{port}/hook", connections, seconds)
    finally:
        server.terminate()
        server.wait()


def runs_in_database(stack: Stack, tenant_id: str) -> int:
    engine = create_engine(stack.database.owner_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("SELECT set_config('aias.tenant_id', :t, true)"), {"t": tenant_id}
            )
            return int(connection.execute(text("SELECT count(*) FROM execution.runs")).scalar_one())
    finally:
        engine.dispose()


def measure(seconds: float, rates: list[float]) -> dict[str, Any]:
    figures: dict[str, Any] = {"payload_bytes": len(PAYLOAD)}
    figures["bare_aiohttp_202_c64"] = bare_baseline(64, seconds)
    with suite() as stack:
        hook = asyncio.run(new_hook(stack.gateway_url, stack.admin_token))
        url = stack.gateway_url + hook.path
        # Idle means settled: a process frees much of its start-up's memory in the seconds after
        # it is ready, and gives it back to the OS 5 s after (aias.core.process.HeapTrim).
        time.sleep(IDLE_AFTER_SECONDS)
        figures["rss_idle_mib"] = rss_mib(stack)
        figures["uss_idle_mib"] = uss_mib(stack)
        figures["healthz_c64"] = wrk(stack.gateway_url + "/healthz", 64, seconds, post=False)
        wrk(url, 16, 2)  # warm-up: caches, pools, the first blocks of reserved runs
        accepted = runs_in_database(stack, hook.tenant_id)
        for connections in (16, 64):
            before = cpu_seconds(stack)
            result = wrk(url, connections, seconds)
            after = cpu_seconds(stack)
            # CPU per accepted webhook, by process: where the machine's two cores go.
            result["cpu_ms_per_webhook"] = {
                name: round(
                    (after[name] - before.get(name, 0.0)) * 1000 / max(1, result["accepted"]), 3
                )
                for name in after
            }
            accepted += result["accepted"]
            figures[f"webhook_c{connections}"] = result
        figures["rss_after_load_mib"] = rss_mib(stack)
        for rate in rates:
            result = openloop(url, rate, seconds)
            accepted += result["accepted"]
            figures[f"webhook_openloop_{int(rate)}"] = result
        figures["runs_in_database"] = runs_in_database(stack, hook.tenant_id)
        figures["accepted_202s"] = accepted
    return figures


def report(figures: dict[str, Any]) -> None:
    print(f"payload: {figures['payload_bytes']} bytes of JSON; wrk with 2 threads")
    for name in ("bare_aiohttp_202_c64", "healthz_c64", "webhook_c16", "webhook_c64"):
        f = figures[name]
        print(
            f"{name}: {f['per_second']:,.0f} req/s, p50 {f['p50_ms']:.1f} ms, "
            f"p99 {f['p99_ms']:.1f} ms, p99.9 {f['p999_ms']:.1f} ms, "
            f"non-2xx {f['non2xx']}, socket errors {f['socket_errors']}"
        )
        if "cpu_ms_per_webhook" in f:
            print(f"  CPU ms per webhook by process: {f['cpu_ms_per_webhook']}")
    for name, f in figures.items():
        if name.startswith("webhook_openloop_"):
            print(
                f"{name}: offered {f['offered_per_second']:.0f}/s, accepted {f['accepted']}, "
                f"other {f['other_statuses']}, errors {f['errors']}, p50 {f['p50_ms']:.1f} ms, "
                f"p99 {f['p99_ms']:.1f} ms, p99.9 {f['p999_ms']:.1f} ms"
            )
    print(f"RSS idle (MiB): {figures['rss_idle_mib']}")
    print(f"USS idle (MiB; memory no other process shares): {figures['uss_idle_mib']}")
    print(f"RSS after wrk (MiB): {figures['rss_after_load_mib']}")
    # wrk stops with requests in flight: those are committed but their 202s are never read, so
    # the database may hold up to one run per connection more than wrk counted (the warm-up's
    # 16, then 16 and 64).
    extra = figures["runs_in_database"] - figures["accepted_202s"]
    bound = 16 + 16 + 64
    verdict = "as expected" if 0 <= extra <= bound else "UNEXPECTED"
    print(
        f"runs in the database: {figures['runs_in_database']}, 202s counted: "
        f"{figures['accepted_202s']} ({extra} answered after wrk stopped listening, at most "
        f"{bound}: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", type=float, nargs="*", default=[150.0, 500.0])
    parser.add_argument("--output", type=Path, help="write the JSON here, not to bench/results")
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    figures = measure(args.seconds, args.rates)
    report(figures)
    write_json("ingest", figures, args.output)


if __name__ == "__main__":
    main()
