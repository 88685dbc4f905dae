"""Tie a process's life to its parent's with Linux ``PR_SET_PDEATHSIG``.

Used two ways:

- as a function, by the supervisor on itself (:func:`set_parent_death_signal`);
- as an exec wrapper, by the supervisor for every part it starts:
  ``python -I -S deathsig.py PARENT_PID -- COMMAND ARGS...`` sets the signal, checks that the parent
  is still ``PARENT_PID`` (it may have died before the signal was armed), then replaces itself with
  ``COMMAND``. The signal setting survives ``execve``, so the part gets SIGTERM when the supervisor dies,
  even by SIGKILL.

The wrapper stands in for ``subprocess.Popen(preexec_fn=...)``, which may deadlock when the parent
has other threads (health checks run librdkafka threads). This file imports only the standard
library so it can run with ``-I -S``.

Example:
    $ python -I -S highwater/stack/deathsig.py 4242 -- redis-server --port 16379
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits (0 clears it).

    Example:
        >>> set_parent_death_signal(0)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def main(argv: list[str]) -> None:
    """Arm SIGTERM-on-parent-death, then exec the command after ``--``."""
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: deathsig.py PARENT_PID -- COMMAND [ARGS...]")
    parent = int(argv[0])
    command = argv[2:]
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(f"deathsig: parent {parent} is gone; not starting {command[0]}")
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"deathsig: cannot run {command[0]}: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
