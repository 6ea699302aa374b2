"""The version of the installed `aias` package, which every process reports with its health."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

# Initial metadata of a health check's answer: the version of the process that answered.
VERSION_METADATA = "x-aias-version"


@functools.cache
def package_version() -> str:
    """The installed distribution's version; "unknown" when run from a tree that is not installed."""
    try:
        return version("aias")
    except PackageNotFoundError:
        return "unknown"
