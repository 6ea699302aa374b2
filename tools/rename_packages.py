"""Rewrites references to the top-level `services`/`gateway` packages as `aias.services`/`aias.gateway`.

rename-packages: skip (this file names what it rewrites)

Run from anywhere: `python3 tools/rename_packages.py` (the standard library only; `--check`
lists what it would change and exits 1 if anything would). It is idempotent, and it reads the
repository's files afresh on each run (tracked and untracked, not ignored), so it also rewrites
files added after it was written. What it rewrites:

- Python import statements: `from services.x import y`, `from gateway import app`,
  `import services.x` (then also the code's `services.x.y` references in that file);
- in Python strings and comments, and anywhere in .toml/.ini/.cfg/.md/.yaml/.yml/.txt, Makefile
  and Dockerfile: a dotted module name `services.<m>...` or `gateway.<m>...` whose `<m>` is a
  real module or folder of the repository (`services.execution.worker_main`, `gateway.main`), so
  `gateway.yaml`, `gateway.access` (a logger) or prose are left alone;
- in Python strings: `services.{...}` / `gateway.{...}` (f-string module names) and the bare
  package as the first argument of `PackageLoader`, `files`, `import_module`, `find_spec`.

A file whose first lines contain the words "rename-packages: skip" is left alone. Afterwards
the rewritten Python files get ruff's import sorting and formatting (`aias.services` sorts
elsewhere than `services`; a longer line may wrap), with the repository's ruff
(`.venv/bin/ruff`, else one on PATH).
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "gateway")
PREFIX = "aias."
SUFFIXES = {".py", ".pyi", ".toml", ".ini", ".cfg", ".md", ".yaml", ".yml", ".txt"}
NAMES = {"Makefile", "Dockerfile"}
SKIP_MARK = "rename-packages: skip"
_PKG = "|".join(PACKAGES)
DOTTED = re.compile(rf"(?<![\w./-])({_PKG})\.([A-Za-z_]\w*)")
TEMPLATE = re.compile(rf"(?<![\w./-])({_PKG})\.(?=\{{)")
# Calls whose first argument is a package name: `PackageLoader("gateway", "templates")`.
MODULE_CALLS = {"PackageLoader", "files", "import_module", "find_spec"}
IMPORT_LINE = re.compile(rf"^(\s*(?:from|import)\s+)({_PKG})(?=[\s.]|$)", re.M)
Position = Callable[[int, int], int]


def is_module(root: Path, package: str, name: str) -> bool:
    """`package.name` names a module or folder of the repository (not a file type or a word)."""
    return (root / package / f"{name}.py").is_file() or (root / package / name).is_dir()


def rewrite_dotted(text: str, root: Path) -> str:
    """Every dotted module name of the repository's packages in the text."""

    def dotted(match: re.Match[str]) -> str:
        package, name = match.groups()
        return PREFIX + match.group(0) if is_module(root, package, name) else match.group(0)

    return DOTTED.sub(dotted, text)


def rewrite_text(text: str, root: Path) -> str:
    """A file that is not Python: dotted module names, and import lines (Markdown's code)."""
    return IMPORT_LINE.sub(rf"\1{PREFIX}\2", rewrite_dotted(text, root))


def _rewrite_string(tokens: list[tokenize.TokenInfo], index: int, root: Path) -> str:
    text = tokens[index].string
    is_argument = (
        index >= 2 and tokens[index - 1].string == "(" and tokens[index - 2].string in MODULE_CALLS
    )
    body = text.lstrip("rRbBuUfF")
    if is_argument and body[1:-1] in PACKAGES:
        return f"{text[: len(text) - len(body)]}{body[0]}{PREFIX}{body[1:-1]}{body[-1]}"
    return TEMPLATE.sub(rf"{PREFIX}\1.", rewrite_dotted(text, root))


def rewrite_python(source: str, root: Path) -> str:
    """Import statements, strings and comments of one module; the code's names too where the
    module binds a package name with a plain `import services.x`."""
    offsets = [0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))

    def at(row: int, col: int) -> int:
        return offsets[row - 1] + col

    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []
    binds_package = False
    statement_start = True
    for index, token in enumerate(tokens):
        kind, text = token.type, token.string
        new = text
        if kind in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) or text == ";":
            statement_start = True
        elif kind == tokenize.COMMENT:
            new = rewrite_dotted(text, root)
        elif kind == tokenize.STRING or kind == getattr(tokenize, "FSTRING_MIDDLE", -1):
            new = _rewrite_string(tokens, index, root)
        elif kind != tokenize.NL:
            if statement_start and kind == tokenize.NAME and text in ("from", "import"):
                names, binds = _imported_packages(tokens, index)
                edits += [(at(*t.start), at(*t.end), PREFIX + t.string) for t in names]
                binds_package = binds_package or binds
            statement_start = False
        if new != text:
            edits.append((at(*token.start), at(*token.end), new))
    if binds_package:
        edits += _name_references(tokens, at)
    for start, end, new in sorted(set(edits), reverse=True):
        source = source[:start] + new + source[end:]
    return source


def _imported_packages(
    tokens: list[tokenize.TokenInfo], index: int
) -> tuple[list[tokenize.TokenInfo], bool]:
    """The `services`/`gateway` tokens that start a module name of the import statement at
    `index`, and whether a plain `import services.x` binds the package's name."""
    keyword = tokens[index].string
    found: list[tokenize.TokenInfo] = []
    binds = False
    expect = True
    for position in range(index + 1, len(tokens)):
        token = tokens[position]
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or token.string == ";":
            break
        if keyword == "from" and token.string == "import":
            break
        if token.string == ",":
            expect = keyword == "import"
        elif expect and token.type == tokenize.NAME:
            if token.string in PACKAGES:
                found.append(token)
                binds = binds or (keyword == "import" and not _aliased(tokens, position))
            expect = False
    return found, binds


def _aliased(tokens: list[tokenize.TokenInfo], index: int) -> bool:
    """The dotted name starting at `index` is followed by `as`."""
    for token in tokens[index + 1 :]:
        if token.string == "." or (token.type == tokenize.NAME and token.string != "as"):
            continue
        return token.string == "as"
    return False


def _name_references(tokens: list[tokenize.TokenInfo], at: Position) -> list[tuple[int, int, str]]:
    """`services.x` in code (not after a dot, not in an import) when a plain import bound it."""
    return [
        (at(*token.start), at(*token.end), PREFIX + token.string)
        for index, token in enumerate(tokens[:-1])
        if token.type == tokenize.NAME
        and token.string in PACKAGES
        and tokens[index + 1].string == "."
        and (index == 0 or tokens[index - 1].string not in (".", "import", "from"))
    ]


def candidate_files(root: Path) -> list[Path]:
    """Tracked and untracked files, not ignored, of the kinds that name modules."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    paths = [root / name for name in listed.split("\0") if name]
    return sorted(
        path
        for path in paths
        if path.is_file()
        and not path.is_symlink()
        and (path.suffix in SUFFIXES or path.name in NAMES or path.name.startswith("Dockerfile."))
    )


def rewrite_file(path: Path, root: Path) -> str | None:
    """The file's new text, or None when nothing changes."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    if SKIP_MARK in "".join(text.splitlines(keepends=True)[:5]):
        return None
    new = rewrite_python(text, root) if path.suffix in (".py", ".pyi") else rewrite_text(text, root)
    return None if new == text else new


def tidy(root: Path, files: list[str]) -> None:
    """ruff's import order and format for the rewritten modules, as `make lint` expects."""
    local = root / ".venv" / "bin" / "ruff"
    ruff = str(local) if local.exists() else shutil.which("ruff")
    if ruff is None:
        print(
            "ruff not found: run `ruff check --fix --select I . && ruff format .`", file=sys.stderr
        )
        return
    subprocess.run(
        [ruff, "check", "--quiet", "--fix", "--select", "I", *files], cwd=root, check=True
    )
    subprocess.run([ruff, "format", "--quiet", *files], cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list what would change; exit 1")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository (default: this one)"
    )
    parser.add_argument("--no-tidy", action="store_true", help="skip ruff's sorting and format")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    changed = []
    for path in candidate_files(root):
        new = rewrite_file(path, root)
        if new is None:
            continue
        changed.append(path.relative_to(root))
        if not args.check:
            path.write_text(new, encoding="utf-8")
    for name in changed:
        print(("would rewrite " if args.check else "rewrote ") + str(name))
    python_files = [str(name) for name in changed if name.suffix in (".py", ".pyi")]
    if python_files and not (args.check or args.no_tidy):
        tidy(root, python_files)
    print(f"{len(changed)} file(s) {'to rewrite' if args.check else 'rewritten'}", file=sys.stderr)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
