"""Regenerates the Python stubs and the descriptor image from protos/ (a tool of the source tree)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
# The generated packages live inside the installed `aias` package, next to the
# shared code, so `from aias.tenancy.v1 import tenancy_service_pb2` works for
# any caller that installed the project.
STUB_ROOT = REPO
GENERATED_PACKAGES = (
    "aias/api/v1",
    "aias/tenancy/v1",
    "aias/execution/v1",
    "aias/artifacts/v1",
    "aias/billing/v1",
)
IMAGE = REPO / "build" / "aias.binpb"
# The same image inside the package: the gateway reads the protos' comments from it for the
# OpenAPI document (generated modules carry no comments).
PACKAGED_IMAGE = "aias/api/v1/descriptors.binpb"


def proto_files() -> list[Path]:
    """Every .proto file of the project, sorted for a stable output."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def _include_dirs() -> list[str]:
    import grpc_tools
    from google.api import annotations_pb2

    # googleapis-common-protos ships the .proto files next to its modules.
    googleapis = Path(annotations_pb2.__file__).parent.parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO_ROOT), str(googleapis), str(well_known)]


def _plugin(name: str) -> str:
    """mypy-protobuf's plugin, a console script: next to this interpreter in a virtual
    environment, on PATH in pip's build environment (which installs scripts elsewhere)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return found


def generate(out_dir: Path, image: Path | None) -> None:
    """Runs protoc once for Python, typing stubs and (optionally) the descriptor image."""
    from grpc_tools import protoc

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
    ]
    packaged = out_dir / PACKAGED_IMAGE
    packaged.parent.mkdir(parents=True, exist_ok=True)
    args += [f"--descriptor_set_out={packaged}", "--include_imports", "--include_source_info"]
    args += [
        f"--plugin={name}={_plugin(name)}" for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc")
    ]
    if protoc.main([*args, *files]) != 0:
        raise SystemExit("protoc failed; see the messages above")
    if image is not None:
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(packaged, image)
    for package in GENERATED_PACKAGES:
        folder = out_dir / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
    for parent in {str(Path(p).parent) for p in GENERATED_PACKAGES}:
        init = out_dir / parent / "__init__.py"
        if not init.exists():
            init.touch()


def drift(target: Path = STUB_ROOT) -> list[str]:
    """Names the generated files that differ from a fresh generation (empty: in sync)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh, image=None)
        problems: list[str] = []
        for package in GENERATED_PACKAGES:
            new_dir, old_dir = fresh / package, target / package
            new_files = {p.name for p in new_dir.iterdir() if p.is_file()}
            old_files = (
                {p.name for p in old_dir.iterdir() if p.is_file()} if old_dir.is_dir() else set()
            )
            for name in sorted(new_files ^ old_files):
                problems.append(f"{package}/{name}: missing or extra")
            for name in sorted(new_files & old_files):
                if not filecmp.cmp(new_dir / name, old_dir / name, shallow=False):
                    problems.append(f"{package}/{name}: differs")
        return problems


def main(argv: list[str] | None = None) -> None:
    """`python -m aias.core.protogen` in a source checkout: regenerate, or with --check report
    drift. An installed package has its stubs from the build and is never rewritten."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the stubs drift from protos/")
    args = parser.parse_args(argv)
    if not (PROTO_ROOT.is_dir() and (REPO / "pyproject.toml").is_file()):
        raise SystemExit(
            f"{REPO} is not a source checkout (no protos/ and pyproject.toml): an installed "
            "package already holds its stubs; run this from a clone of the repository"
        )
    if args.check:
        problems = drift()
        if problems:
            raise SystemExit("generated stubs drift from protos/:\n  " + "\n  ".join(problems))
        return
    for package in GENERATED_PACKAGES:
        shutil.rmtree(STUB_ROOT / package, ignore_errors=True)
    generate(STUB_ROOT, IMAGE)


if __name__ == "__main__":
    main()
