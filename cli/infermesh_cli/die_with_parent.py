"""Exec a command that Linux ends (SIGTERM) when the process that started it exits.

Usage: python -m infermesh_cli.die_with_parent PARENT_PID COMMAND [ARGS...]

The launcher's services run in their own session so a terminal's Ctrl-C reaches only the
launcher; without this, a launcher killed outright would leave them running and holding their
ports. Setting PR_SET_PDEATHSIG here, before exec, avoids subprocess's preexec_fn, which can
deadlock a child forked from a multi-threaded parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m infermesh_cli.die_with_parent PARENT_PID COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent_pid, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
            return 1
        # The parent may have died before prctl took effect: then nobody would signal us.
        if os.getppid() != parent_pid:
            return 1
    os.execvp(command[0], command)
    return 1  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
