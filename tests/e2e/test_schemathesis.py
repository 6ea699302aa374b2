"""Schemathesis against the running suite's own /openapi.json: no 5xx, and every answer as documented."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from aias.core.launcher import Stack
from tests.e2e.client import new_tenant

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


async def test_every_operation_answers_as_the_document_says(
    http: aiohttp.ClientSession, stack: Stack, tmp_path: Path
) -> None:
    owner = await new_tenant(http, "pro")
    schemathesis = Path(sys.executable).parent / "st"
    process = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "run",
        f"{stack.gateway_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {owner.key}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "coverage,fuzzing",
        "--max-examples",
        "10",
        "--workers",
        "2",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
