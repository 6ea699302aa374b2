"""The real suite storing artifacts in S3 (a bucket of a local moto server): a webhook's run
stores its artifact in the bucket, it downloads through the gateway whole and by range, and
deleting it frees the object."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from aias.core.launcher import PROCESSES, Stack
from aias.services.artifacts.s3store import S3BlobStore
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.client import ORDER, expect, new_endpoint, new_tenant, wait_for_run
from tests.e2e.conftest import ADMIN_TOKEN, USED_SECRETS, own_suite
from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, new_bucket, s3_settings
from tests.stored_blobs import blob_digests, read_blob

PREFIX = "e2e"


@dataclass
class S3Suite:
    stack: Stack
    data_dir: Path
    endpoint: str
    bucket: str


@pytest.fixture(scope="module")
def s3_suite(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[S3Suite]:
    """The whole suite on its own database, its artifacts in a new bucket of the moto server,
    configured only through the environment, as an operator would."""
    bucket = asyncio.run(new_bucket(s3_endpoint))
    data_dir = tmp_path_factory.mktemp("s3-suite")
    with own_suite(
        data_dir,
        {
            "AIAS_WORKER_POLL_SECONDS": "0.5",
            "AIAS_ARTIFACTS_STORE": f"s3://{bucket}/{PREFIX}",
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            # A deleted artifact's content leaves the bucket within the test.
            "AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS": "1",
            "AIAS_ARTIFACTS_BLOB_GRACE_SECONDS": "0",
            # Every blob in the bucket, small ones too: what these tests look for there.
            "AIAS_ARTIFACTS_INLINE_BYTES": "0",
        },
    ) as stack:
        yield S3Suite(stack, data_dir, s3_endpoint, bucket)
        # Every process stops cleanly (the suite's own stop afterwards finds none left).
        assert stack.stop() == {spec.name: 0 for spec in PROCESSES}
    # The store's credentials, like every other secret, appear in no process's log.
    secrets = (SECRET_ACCESS_KEY, *USED_SECRETS, ADMIN_TOKEN, INTERNAL_TOKEN)
    for log in (data_dir / "logs").iterdir():
        text = log.read_text(errors="replace")
        assert not [secret[:12] for secret in secrets if secret in text], log.name


@pytest.fixture
async def bucket(s3_suite: S3Suite) -> AsyncIterator[S3BlobStore]:
    """The tests' own handle on the suite's bucket."""
    store = S3BlobStore(s3_settings(s3_suite.endpoint, s3_suite.bucket, PREFIX))
    await store.prepare()
    yield store
    await store.close()


async def test_a_runs_artifact_is_stored_in_s3_downloads_by_range_and_is_deleted(
    s3_suite: S3Suite, bucket: S3BlobStore
) -> None:
    async with aiohttp.ClientSession(base_url=s3_suite.stack.gateway_url) as http:
        owner = await new_tenant(http)
        _, secret = await new_endpoint(http, owner)
        async with http.post(f"/api/webhooks/{owner.id}/{secret}", json=ORDER) as response:
            run = await wait_for_run(http, owner, (await expect(response, 202))["run_id"])
        assert run["status"] == "succeeded", run
        async with http.get(
            "/api/artifacts", params={"run_id": run["id"]}, headers=owner.auth
        ) as response:
            (artifact,) = (await expect(response, 200))["artifacts"]
        tenant, sha256 = uuid.UUID(owner.id), artifact["sha256"]

        # The content is in the bucket, and nowhere on the local disk.
        assert await blob_digests(bucket, tenant) == [sha256]
        stored = await read_blob(bucket, tenant, sha256)
        assert hashlib.sha256(stored).hexdigest() == sha256
        assert not (s3_suite.data_dir / "artifacts").exists()

        download = f"/api/artifacts/{artifact['id']}/download"
        async with http.get(download, headers=owner.auth) as response:
            assert response.status == 200
            assert await response.read() == stored
        last = len(stored) - 1
        async with http.get(download, headers={**owner.auth, "Range": f"bytes=2-{last}"}) as got:
            assert got.status == 206
            assert got.headers["Content-Range"] == f"bytes 2-{last}/{len(stored)}"
            assert await got.read() == stored[2:]

        async with http.delete(f"/api/artifacts/{artifact['id']}", headers=owner.auth) as response:
            assert await expect(response, 200) == {}
        async with http.get(download, headers=owner.auth) as response:
            assert response.status == 404
    # The artifacts process's sweeper frees the content no artifact names any more.
    for _ in range(100):
        if await blob_digests(bucket, tenant) == []:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the deleted artifact's object is still in the bucket after 10 s")
