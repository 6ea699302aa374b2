"""What a benchmark ran on, printed beside its figures."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> list[str]:
    """The machine and software lines every benchmark prints first."""
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
        f"software: Python {platform.python_version()}, {platform.platform()}",
    ]
