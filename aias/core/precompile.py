"""Compiles the standard library's and the installed packages' .pyc files for the optimization
level this interpreter runs at: `python -OO -m aias.core.precompile`.

The launcher and the container image run every process with PYTHONOPTIMIZE=2 (no docstrings and
no asserts: about 4 MiB less memory per process). pip writes only the plain .pyc files, and a
process that finds none for its level compiles each module from source at every start, in
memory, when it may not write them (a read-only image, PYTHONDONTWRITEBYTECODE). `make` runs this
after installing the packages, and the Dockerfile after installing the wheel.
"""

from __future__ import annotations

import compileall
import re
import sys
import sysconfig

# The standard library's own tests (some are not valid Python on purpose), and the base
# interpreter's site-packages, which a virtual environment does not use.
_SKIPPED_IN_STDLIB = re.compile(r"/(site-packages|test)/")


def main() -> None:
    compileall.compile_dir(sysconfig.get_path("stdlib"), quiet=2, workers=0, rx=_SKIPPED_IN_STDLIB)
    compileall.compile_dir(sysconfig.get_path("purelib"), quiet=2, workers=0)
    print(f"compiled .pyc files for optimization level {sys.flags.optimize}")


if __name__ == "__main__":
    main()
