"""The image: built with podman where it can run, and in any case the image's Python as the
Dockerfile's steps make it (conftest.py replays them in fresh virtual environments)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.packaging.conftest import Replayed, clean_env
from tests.packaging.dockerfile import REPO, parse

pytestmark = pytest.mark.packaging


def _base_image() -> str:
    text = (REPO / "Dockerfile").read_text()
    return next(
        line.split("=", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("ARG PYTHON_IMAGE=")
    )


def _podman() -> list[str]:
    """podman as it runs here (root in a VM without overlay: vfs storage, chroot isolation)."""
    if shutil.which("podman") is None:
        pytest.skip("no podman here (apt-get install podman); the replay tests stand in")
    podman = ["podman", "--storage-driver", "vfs"]
    if subprocess.run([*podman, "image", "exists", _base_image()], check=False).returncode:
        pytest.skip(
            f"{_base_image()} is not in podman's storage and no registry is reachable here "
            "(podman pull it where one is); the replay tests stand in"
        )
    return podman


def test_the_image_builds_and_runs_its_entry_points(replayed: Replayed) -> None:
    podman = _podman()
    tag = f"localhost/aias-test-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        [*podman, "build", "--isolation", "chroot", "-t", tag, "-f", "Dockerfile", "."],
        cwd=replayed.context,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    try:
        assert build.returncode == 0, build.stderr[-3000:]
        run = subprocess.run(
            [
                *podman,
                "run",
                "--rm",
                tag,
                "sh",
                "-c",
                "id -un && stat -c %U /data/artifacts && aias --help && aias-gateway; echo $?",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = run.stdout.split()
        assert lines[:2] == ["aias", "aias"], run.stdout
        assert "AIAS_INTERNAL_TOKEN" in run.stderr
    finally:
        subprocess.run([*podman, "rmi", "-f", tag], capture_output=True, check=False)


def test_the_image_runs_the_wheel_on_the_locked_dependencies_only(
    replayed: Replayed, elsewhere: Path
) -> None:
    """The runtime stage installs the lock with hashes, then the wheel without dependencies:
    what is installed is exactly the lock plus aias, and nothing is missing (pip check)."""
    pins = [
        Requirement(line.rstrip(" \\"))
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    ]
    locked = {
        canonicalize_name(pin.name) for pin in pins if pin.marker is None or pin.marker.evaluate()
    }
    result = subprocess.run(
        [str(replayed.python), "-m", "pip", "list", "--format=freeze", "--exclude-editable"],
        cwd=elsewhere,
        env=clean_env(replayed.bindir),
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonicalize_name(line.split("==")[0]) for line in result.stdout.split()}
    installed -= {"pip", "setuptools"}
    assert installed == locked | {"aias"}


def test_the_replay_followed_every_python_step_of_the_dockerfile() -> None:
    """Guards the replay itself: if the Dockerfile gains an install step of another kind, this
    says the replay does not cover it."""
    for stage in parse():
        for command in stage.commands():
            assert command[0] in ("pip", "python", "useradd", "mkdir", "chown", "rm"), (
                f"the replay (tests/packaging/conftest.py) does not know `{command[0]}`"
            )
