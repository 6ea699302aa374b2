"""The package build: the mandated folders installed as `aias.*`, the stubs generated into it."""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# `services/` and `gateway/` stay at the top of the repository (the mandated layout) and are
# installed inside `aias`, so the distribution owns one top-level name; the mapping itself is
# [tool.setuptools.package-dir] in pyproject.toml.
MAPPED = {"aias.services": "services", "aias.gateway": "gateway"}


def _packages() -> list[str]:
    """Every package of the distribution under its installed name, found afresh on each build,
    so a new subpackage needs no edit here. In the mapped folders every directory counts (the
    Alembic scripts and the templates live in plain folders), as setuptools recommends."""
    found = [
        name
        for name in find_packages(include=["aias", "aias.*"])
        if not name.startswith(tuple(MAPPED))
    ]
    for package, folder in MAPPED.items():
        subpackages = find_namespace_packages(folder, exclude=["*__pycache__*"])
        found += [package, *(f"{package}.{sub}" for sub in subpackages)]
    return found


def _generate(out_dir: Path) -> None:
    # Run from its file: the build environment has not installed this project.
    protogen = runpy.run_path(str(ROOT / "aias" / "core" / "protogen.py"))
    protogen["generate"](out_dir, image=None)


class BuildWithStubs(build_py):
    """build_py that also writes the generated stubs (`aias/<service>/v1/`, typing stubs and
    the descriptor image) from protos/ into the build, so a wheel from a clean clone has them."""

    def run(self) -> None:
        super().run()
        # An editable install uses the source tree, where `make` generates the stubs.
        if not self.editable_mode:
            _generate(Path(self.build_lib))


setup(packages=_packages(), cmdclass={"build_py": BuildWithStubs})
