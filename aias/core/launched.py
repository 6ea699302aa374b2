"""Runs one process of the suite so that it gets SIGTERM when the launcher that started it dies."""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    """`python -m aias.core.launched <launcher pid> <module>`: arm the death signal, then run the
    module as `python -m <module>` would.

    The launcher cannot arm it between fork and exec (`preexec_fn`): that makes subprocess use
    fork() instead of vfork(), and fork() runs gRPC's at-fork handlers, which can deadlock in a
    process that has used gRPC (the launcher's health checks; grpc/grpc#37259).
    """
    launcher, module = int(sys.argv[1]), sys.argv[2]
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # the launcher died before the signal was armed
        sys.exit(1)
    del sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
