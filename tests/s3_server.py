"""moto's standalone S3-compatible server on a free port, and a bucket in it, for the tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from aiobotocore.session import get_session

from aias.services.artifacts.s3settings import MIN_PART_BYTES, S3Location, S3Settings

REGION = "us-east-1"
# moto accepts any credentials; these only have to be present and consistent.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing-secret"
START_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """Starts `moto.server` in its own process and yields its endpoint URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


def s3_settings(endpoint: str, bucket: str, prefix: str = "") -> S3Settings:
    """Settings for a bucket of the test server; the smallest parts S3 allows, so tests are quick."""
    return S3Settings(
        location=S3Location.parse(f"s3://{bucket}/{prefix}"),
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        part_bytes=MIN_PART_BYTES,
    )


async def new_bucket(endpoint: str) -> str:
    """Creates a bucket with a unique name, so tests never share one."""
    name = f"aias-test-{uuid.uuid4().hex[:12]}"
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    ) as client:
        await client.create_bucket(Bucket=name)
    return name
