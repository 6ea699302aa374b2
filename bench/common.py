"""What every benchmark shares: the machine it ran on, a running suite, a tenant, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from aias.core.launcher import Stack, launch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """CPU model and count, memory, OS and the versions that shape the figures."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("aias", "grpcio", "aiohttp", "SQLAlchemy")},
    }


def print_machine(info: Mapping[str, Any]) -> None:
    versions = ", ".join(f"{name} {v}" for name, v in info["versions"].items())
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}")
    print(f"software: Python {info['python']}, {versions}")


def write_json(name: str, figures: Mapping[str, Any], path: Path | None = None) -> Path:
    """Writes the figures beside the machine to `path`, by default
    bench/results/<name>-<time>.json."""
    if path is None:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
    print(f"written: {path}")
    return path


@contextlib.contextmanager
def suite(extra_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """The whole suite on ephemeral ports with its own embedded PostgreSQL, stopped afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="aias-bench-"))
    data_dir.chmod(0o755)
    stack = launch(
        data_dir,
        {**os.environ, "AIAS_LOG_LEVEL": "WARNING", **(extra_env or {})},
        any_port=True,
        log_dir=data_dir / "logs",
    )
    try:
        yield stack
    finally:
        stack.stop()
        stack.database.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class Hook:
    """A tenant's webhook URL path and its API key."""

    tenant_id: str
    key: str
    path: str


ONE_STEP = {
    "name": "bench",
    "steps": [{"id": "shape", "type": "transform", "config": {"expression": "{id: id}"}}],
}


async def new_hook(
    url: str,
    admin_token: str,
    workflow: Mapping[str, Any] = ONE_STEP,
    limits: Mapping[str, int] | None = None,
) -> Hook:
    """An enterprise tenant (no limits unless given), a workflow and a webhook endpoint."""
    operator = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post(
            "/api/tenants", json={"name": "bench", "plan": "enterprise"}, headers=operator
        ) as response:
            created = await response.json()
        tenant_id = created["tenant"]["id"]
        if limits:
            async with http.patch(
                f"/api/tenants/{tenant_id}", json={"limit_overrides": limits}, headers=operator
            ) as response:
                response.raise_for_status()
        auth = {"Authorization": f"Bearer {created['admin_key']}"}
        async with http.post("/api/workflows", json=workflow, headers=auth) as response:
            workflow_id = (await response.json())["workflow"]["id"]
        async with http.post(
            "/api/webhook-endpoints", headers=auth, json={"workflow_id": workflow_id, "name": "b"}
        ) as response:
            hook_url: str = (await response.json())["webhook_endpoint"]["url"]
    return Hook(tenant_id, created["admin_key"], "/api/" + hook_url.split("/api/", 1)[1])


def rss_mib(stack: Stack) -> dict[str, float]:
    """Each process's resident memory, MiB."""
    found = {}
    for name, child in stack.children.items():
        with contextlib.suppress(psutil.Error):
            found[name] = round(psutil.Process(child.process.pid).memory_info().rss / 2**20, 1)
    return found


def uss_mib(stack: Stack) -> dict[str, float]:
    """Each process's unique memory, MiB: what it alone holds, so what stopping it frees. RSS
    also counts pages it shares with the others (the interpreter, gRPC's and OpenSSL's
    libraries), which a machine holds once."""
    found = {}
    for name, child in stack.children.items():
        with contextlib.suppress(psutil.Error):
            full = psutil.Process(child.process.pid).memory_full_info()
            found[name] = round(full.uss / 2**20, 1)
    return found


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time used so far by each process and its children (step processes, PostgreSQL's
    are not the launcher's children and are counted apart)."""
    found = {}
    for name, child in stack.children.items():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(child.process.pid)
            tree = [process, *process.children(recursive=True)]
            found[name] = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
    found["postgresql"] = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] not in ("postgres", "postmaster"):
            continue
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            found["postgresql"] += times.user + times.system
            # The postmaster holds what its ended backends used (a connection closed after a
            # burst, say), which no live process shows any more.
            if p.parent() is None or p.parent().name() not in ("postgres", "postmaster"):
                found["postgresql"] += times.children_user + times.children_system
    return found


def ensure_wrk() -> str:
    """wrk from Debian's packages, installed when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"
