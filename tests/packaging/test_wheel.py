"""The wheel from a clean build context: what it holds, and that what it installs works."""

from __future__ import annotations

import json
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.packaging.conftest import Replayed
from tests.packaging.dockerfile import REPO

pytestmark = pytest.mark.packaging

SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# The processes' console scripts start a server: without settings each must say which are
# missing, not fail to import.
SERVERS = {name for name, target in SCRIPTS.items() if target.startswith("aias.services.")} | {
    "aias-gateway"
}


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_installs_one_top_level_package_with_the_stubs(replayed: Replayed) -> None:
    names = _names(replayed.wheel)
    assert {name.split("/")[0] for name in names} == {"aias", "aias-0.1.0.dist-info"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    with zipfile.ZipFile(replayed.wheel) as archive:
        assert archive.read(top_level).decode().split() == ["aias"]
    for service in ("tenancy", "execution", "artifacts", "billing"):
        assert f"aias/{service}/v1/{service}_service_pb2.py" in names
        assert f"aias/{service}/v1/{service}_service_pb2_grpc.pyi" in names
        assert f"aias/services/{service}/main.py" in names
        assert any(n.startswith(f"aias/services/{service}/migrations/versions/") for n in names)
    assert "aias/api/v1/descriptors.binpb" in names, "the gateway reads the protos' comments"
    assert "aias/gateway/dashboard/templates/base.html" in names
    assert "aias/gateway/dashboard/static/dashboard.css" in names


def test_every_console_script_imports_from_the_installed_package(
    replayed: Replayed, elsewhere: Path
) -> None:
    assert "aias-protogen" not in SCRIPTS, "no console script rewrites the installed package"
    check = (
        "import importlib.metadata as m, json\n"
        "eps = [e for e in m.entry_points(group='console_scripts') if e.dist.name == 'aias']\n"
        "for e in eps: assert callable(e.load()), e\n"
        "import aias; print(json.dumps(sorted(e.name for e in eps))); print(aias.__file__)\n"
    )
    result = replayed.run(str(replayed.python), "-c", check, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    listed, location = result.stdout.splitlines()
    assert set(json.loads(listed)) == set(SCRIPTS)
    assert "site-packages" in location, "imported from the installed package, not the source"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_starts(replayed: Replayed, elsewhere: Path, script: str) -> None:
    if script in SERVERS:
        result = replayed.run(str(replayed.bindir / script), cwd=elsewhere)
        assert result.returncode != 0
        assert "AIAS_" in result.stderr, f"{script} names the missing settings: {result.stderr}"
    else:
        result = replayed.run(str(replayed.bindir / script), "--help", cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert "usage" in result.stdout.lower()
    assert "Traceback" not in result.stderr, result.stderr


def _readme_example() -> str:
    """The Python block of README's "internal callers" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Calling the services directly (internal callers)", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_readmes_internal_caller_example_runs_against_the_installed_stubs(
    replayed: Replayed, elsewhere: Path
) -> None:
    example = _readme_example()
    assert "asyncio.run(main())" in example
    # Everything but the call to a running suite: the imports, the stub, the request, the enum.
    program = example.replace("asyncio.run(main())", "") + (
        "\nassert asyncio.iscoroutinefunction(main)\n"
        "pb_grpc.ExecutionServiceStub(grpc.aio.insecure_channel('localhost:1'))\n"
        "pb.ListRunsRequest(page_size=10)\n"
        "print(pb.RunStatus.Name(0))\n"
    )
    result = replayed.run(str(replayed.python), "-c", program, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("_UNSPECIFIED")


def test_protogen_refuses_to_rewrite_an_installed_package(
    replayed: Replayed, elsewhere: Path
) -> None:
    find = "import aias.execution.v1 as v1; print(v1.__path__[0])"
    stubs = Path(replayed.run(str(replayed.python), "-c", find, cwd=elsewhere).stdout.strip())
    before = sorted(p.name for p in stubs.iterdir())
    result = replayed.run(str(replayed.python), "-m", "aias.core.protogen", cwd=elsewhere)
    assert result.returncode != 0
    assert "not a source checkout" in result.stderr
    assert sorted(p.name for p in stubs.iterdir()) == before
    assert "execution_service_pb2.py" in before


def test_the_installed_dependencies_are_consistent(replayed: Replayed, elsewhere: Path) -> None:
    result = replayed.run(str(replayed.python), "-m", "pip", "check", cwd=elsewhere)
    assert result.returncode == 0, result.stdout
