"""Container health probe: exit 0 when a gRPC server is SERVING or an HTTP URL answers 200."""

from __future__ import annotations

import argparse
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(address: str, timeout: float) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="host:port of a gRPC server, or an http:// URL")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    check = http_ok if args.target.startswith("http") else grpc_serving
    sys.exit(0 if check(args.target, args.timeout) else 1)


if __name__ == "__main__":
    main()
