"""The Dockerfile and .dockerignore read as data: stages, steps, the build context."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    """One FROM ... section: its name and its instructions in order, as (keyword, argument)."""

    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [argument for key, argument in self.steps if key == keyword]

    def commands(self) -> list[list[str]]:
        """Every command of every RUN, in order."""
        return [command for argument in self.arguments("RUN") for command in split_run(argument)]


def split_run(argument: str) -> list[list[str]]:
    """A RUN's shell commands, split at `&&`, as argument lists."""
    return [shlex.split(part) for part in argument.split("&&") if part.strip()]


def parse(path: Path = REPO / "Dockerfile") -> list[Stage]:
    """The stages of a Dockerfile (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, argument = line.partition(" ")
        keyword, argument = keyword.upper(), " ".join(argument.split())
        if keyword == "FROM":
            words = argument.split()
            stages.append(Stage(words[2] if len(words) == 3 else str(len(stages))))
        elif stages:
            stages[-1].steps.append((keyword, argument))
    return stages


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it: `*` within a path segment, `**` across."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out + r"\Z")


def ignored(path: str, rules_file: Path = REPO / ".dockerignore") -> bool:
    """Whether Docker leaves `path` (relative, with slashes) out of the build context: the last
    rule that matches the path or one of its parent folders decides."""
    rules = [
        (line.startswith("!"), _pattern(line.lstrip("!").strip("/")))
        for line in (raw.strip() for raw in rules_file.read_text().splitlines())
        if line and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    verdict = False
    for negated, pattern in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def context_files(root: Path = REPO) -> list[str]:
    """The build context of a clean clone: the repository's files (tracked, or new and not
    ignored by git) that .dockerignore lets in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted(
        name
        for name in listed.split("\0")
        if name and (root / name).is_file() and not ignored(name, root / ".dockerignore")
    )
