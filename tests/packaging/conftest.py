"""The Dockerfile replayed once per session: the wheel built from a clean build context, then
installed as the image installs it, each stage in a fresh virtual environment."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.dockerfile import REPO, Stage, context_files, parse, split_run

# A stage's steps may take this long (the runtime's dependencies from the pip cache: ~40 s).
STEP_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Replayed:
    """The result of the replay: the runtime stage's environment and the wheel it installed."""

    python: Path
    bindir: Path
    wheel: Path
    context: Path

    def run(self, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command of the installed environment, away from the source tree."""
        return subprocess.run(
            list(args),
            cwd=cwd,
            env=clean_env(self.bindir),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def clean_env(bindir: Path | None = None) -> dict[str, str]:
    """The environment without anything that would reach the source tree or this venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("AIAS_")}
    if bindir is not None:
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def make_context(target: Path) -> Path:
    """A copy of the build context a clean clone sends (no generated stubs, no links)."""
    for name in context_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)
    return target


class StageRun:
    """One stage: a fresh venv stands for the image's Python, container paths map to folders."""

    def __init__(self, stage: Stage, work: Path, context: Path, done: dict[str, StageRun]) -> None:
        self.stage = stage
        self.root = work / f"stage-{stage.name}"
        self.venv = self.root / "venv"
        self.paths: dict[str, Path] = {}
        self.cwd = self.root
        self.context = context
        self.done = done

    def host(self, path: str) -> Path:
        """Where a container path is here: a copied source, else the stage's own folder."""
        for prefix in sorted(self.paths, key=len, reverse=True):
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return self.paths[prefix] / path[len(prefix) :].lstrip("/")
        return self.root / "fs" / path.lstrip("/")

    def replay(self) -> None:
        venv.create(self.venv, with_pip=True)
        workdir = "/"
        for keyword, argument in self.stage.steps:
            if keyword == "WORKDIR":
                workdir = argument
                self.cwd = self.host(workdir)
                self.cwd.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = argument.split()
                origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
                source, destination = [w for w in words if not w.startswith("--")]
                destination = workdir if destination == "." else destination
                if origin is not None:
                    self.paths[destination] = self.done[origin].host(source)
                else:
                    self.paths[destination] = self.context / source.lstrip("./")
            elif keyword == "RUN":
                self.cwd = self.host(workdir)
                self.cwd.mkdir(parents=True, exist_ok=True)
                for command in split_run(argument):
                    self.run(command)

    def run(self, command: list[str]) -> None:
        # The image's Python steps; the others (useradd, mkdir, chown, rm) are the system's,
        # which tests/unit/test_deployment.py checks as text.
        if command[0] not in ("pip", "python"):
            return
        python = str(self.venv / "bin" / "python")
        argv = [python, "-m", "pip"] if command[0] == "pip" else [python]
        for word in command[1:]:
            if word == "--no-cache-dir":
                continue  # the one difference: this machine's pip cache keeps the test fast
            if word.startswith("/"):
                mapped = str(self.host(word))
                argv += sorted(glob.glob(mapped)) if "*" in mapped else [mapped]
            else:
                argv.append(word)
        if "--outdir" in argv:
            Path(argv[argv.index("--outdir") + 1]).mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            argv,
            cwd=self.cwd,
            env=clean_env(self.venv / "bin"),
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_SECONDS,
            check=False,
        )
        assert result.returncode == 0, (
            f"Dockerfile step `{shlex.join(command)}` failed:\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )


@pytest.fixture(scope="session")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """Every stage of the Dockerfile replayed in order; the last one is the image."""
    work = tmp_path_factory.mktemp("image")
    context = make_context(work / "context")
    done: dict[str, StageRun] = {}
    for stage in parse():
        run = StageRun(stage, work, context, done)
        run.replay()
        done[stage.name] = run
    final = done[parse()[-1].name]
    wheels = sorted((work / f"stage-{parse()[0].name}" / "fs" / "wheels").glob("*.whl"))
    assert len(wheels) == 1, f"the build stage made {wheels}"
    return Replayed(final.venv / "bin" / "python", final.venv / "bin", wheels[0], context)


@pytest.fixture(scope="session")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with no source tree in reach."""
    return tmp_path_factory.mktemp("elsewhere")
