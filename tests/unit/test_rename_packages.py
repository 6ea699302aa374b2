"""tools/rename_packages.py on a small tree: what it rewrites, what it leaves, idempotent."""

# rename-packages: skip (the samples below are what the tool rewrites)

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = '''"""A module."""

import services.zeta.worker_main
from gateway import zapp
from gateway.zapp import make, run  # gateway.zapp.make is here
from services.zeta.queue import (
    Queue,
)

LAUNCH = ["python", "-m", "services.zeta.worker_main"]
SPEC = f"services.{name}"
LOADER = PackageLoader("gateway", "templates")
LOGGER = logging.getLogger("gateway.access")
FILE = "gateway.yaml"
gateway = services.zeta.worker_main.main()
'''
EXPECTED = '''"""A module."""

import aias.services.zeta.worker_main
from aias.gateway import zapp
from aias.gateway.zapp import make, run  # aias.gateway.zapp.make is here
from aias.services.zeta.queue import (
    Queue,
)

LAUNCH = ["python", "-m", "aias.services.zeta.worker_main"]
SPEC = f"aias.services.{name}"
LOADER = PackageLoader("aias.gateway", "templates")
LOGGER = logging.getLogger("gateway.access")
FILE = "gateway.yaml"
gateway = aias.services.zeta.worker_main.main()
'''


def test_rewrites_module_references_and_nothing_else_and_twice_is_once(tmp_path: Path) -> None:
    for folder in ("services/zeta", "gateway"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "services/zeta/worker_main.py").write_text("")
    (tmp_path / "gateway/zapp.py").write_text("")
    (tmp_path / "app.py").write_text(SOURCE)
    (tmp_path / "pyproject.toml").write_text('run = "services.zeta.worker_main:main"\n')
    (tmp_path / "notes.md").write_text("The gateway.zapp module; see gateway.yaml. services.\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    tool = [
        sys.executable,
        str(REPO / "tools/rename_packages.py"),
        "--root",
        str(tmp_path),
        "--no-tidy",
    ]
    subprocess.run(tool, check=True, capture_output=True)
    assert (tmp_path / "app.py").read_text() == EXPECTED
    assert (
        tmp_path / "pyproject.toml"
    ).read_text() == 'run = "aias.services.zeta.worker_main:main"\n'
    assert (tmp_path / "notes.md").read_text() == (
        "The aias.gateway.zapp module; see gateway.yaml. services.\n"
    )
    check = subprocess.run([*tool, "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
