"""Processes of the local stack on disk: where files live, pid files, liveness, log tails.

A pid file holds just the pid. Whether the pid still belongs to the process that wrote it is decided
from ``/proc``: a process that started after the pid file was written is someone else reusing the pid,
and a zombie counts as gone.

Example:
    >>> paths = StackPaths(Path("/tmp/hw-state"))
    >>> paths.pid_file("redis").name
    'redis.pid'
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SUPERVISOR = "supervisor"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START_SLACK_S = 2.0  # clock-tick rounding and pid-file write delay


@dataclass(frozen=True)
class StackPaths:
    """The layout of the state directory used by the local stack."""

    state_dir: Path

    @property
    def logs_dir(self) -> Path:
        """``<state_dir>/logs``: one ``<part>.log`` per part and ``supervisor.log``."""
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """``<state_dir>/run``: pid files and the supervisor's ready/failure markers."""
        return self.state_dir / "run"

    @property
    def bin_dir(self) -> Path:
        """``<state_dir>/bin``: executable copies of shipped binaries."""
        return self.state_dir / "bin"

    def log(self, name: str) -> Path:
        """Log file of a part (or of the supervisor)."""
        return self.logs_dir / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        """Pid file of a part (or of the supervisor)."""
        return self.run_dir / f"{name}.pid"

    @property
    def ready_file(self) -> Path:
        """Written by the supervisor, holding its pid, once every part is healthy."""
        return self.run_dir / "ready"

    @property
    def failure_file(self) -> Path:
        """Why the supervisor last stopped the stack on its own (a part failed); removed on start."""
        return self.run_dir / "failure.txt"

    def prepare(self) -> None:
        """Create the directories."""
        for directory in (self.logs_dir, self.run_dir, self.bin_dir):
            directory.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_pid(path: Path, pid: int) -> None:
    """Record ``pid`` in a pid file."""
    write_atomic(path, f"{pid}\n")


def _proc_start_and_state(pid: int) -> tuple[float, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return boot + int(fields[19]) / _CLOCK_TICKS, fields[0]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    info = _proc_start_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")


def live_pid(path: Path) -> int | None:
    """The pid in pid file ``path`` if that process still runs; None for a missing or stale file."""
    try:
        pid = int(path.read_text().split()[0])
        written = path.stat().st_mtime
    except (OSError, ValueError, IndexError):
        return None
    info = _proc_start_and_state(pid)
    if info is None or info[1] in ("Z", "X") or info[0] > written + _START_SLACK_S:
        return None
    return pid


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs or ``timeout`` passes; returns those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def terminate(pids: list[int], grace: float) -> None:
    """SIGTERM ``pids``, then SIGKILL whatever still runs after ``grace`` seconds, and wait for it."""
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
    for pid in wait_gone(pids, grace):
        signal_pid(pid, signal.SIGKILL)
    wait_gone(pids, grace)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
