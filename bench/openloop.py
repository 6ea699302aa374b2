"""An open-loop load generator: requests leave on a fixed schedule whatever the answers do.

A closed loop (wrk) waits for each answer before sending the next, so a slow server gets fewer
requests and its latency looks better than it is (coordinated omission). Here each request's
latency is measured from the moment it was due, not from when it could be sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp


async def run(url: str, rate: float, seconds: float, body: bytes) -> dict[str, float | int]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(due: float) -> None:
            nonlocal errors
            try:
                async with http.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        start = time.perf_counter()
        tasks = []
        total = int(rate * seconds)
        for index in range(total):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    latencies.sort()

    def percentile(share: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(len(latencies) * share))] * 1000

    return {
        "offered_per_second": rate,
        "sent": total,
        "accepted": statuses.get(202, 0),
        "other_statuses": sum(n for status, n in statuses.items() if status != 202),
        "errors": errors,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(0.99),
        "p999_ms": percentile(0.999),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--body", default="{}")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.seconds, args.body.encode()))))


if __name__ == "__main__":
    main()
