"""``LocalStack``: start, stop and inspect the local stack (broker, schema registry, Redis).

Process design: :meth:`LocalStack.start` spawns a detached supervisor process
(:mod:`highwater.stack.supervisor`) which starts the parts as its children and stops them when it
is told to or when it dies. Until the stack is healthy the supervisor also dies with its caller, so
an ``up`` interrupted or killed half-way leaves nothing behind; once healthy it outlives the caller
(the point of ``highwater up``), unless ``outlive_caller=False`` (test sessions). ``stop`` signals the
supervisor and waits until every part's pid is gone.

Example:
    >>> from highwater.settings import Settings
    >>> stack = LocalStack(Settings(state_dir="/tmp/hw"))  # doctest: +SKIP
    >>> stack.start()  # doctest: +SKIP
    True
    >>> [(s.name, s.healthy) for s in stack.status()]  # doctest: +SKIP
    [('broker', True), ('schema-registry', True), ('redis', True)]
    >>> stack.stop()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from highwater.settings import Settings
from highwater.stack.env import settings_env
from highwater.stack.parts import StackError, preflight, stack_parts
from highwater.stack.procs import (
    SUPERVISOR,
    StackPaths,
    live_pid,
    pid_alive,
    signal_pid,
    tail,
    terminate,
    wait_gone,
)
from highwater.stack.supervisor import START_TIMEOUT_S, STOP_GRACE_S, Supervisor


@dataclass(frozen=True)
class PartStatus:
    """What ``status`` says about one part."""

    name: str
    pid: int | None
    port: int
    healthy: bool
    detail: str


class LocalStack:
    """The local stack described by ``settings`` (ports, state directory)."""

    def __init__(
        self, settings: Settings, *, outlive_caller: bool = True, start_timeout: float = START_TIMEOUT_S
    ) -> None:
        self.settings = settings
        self.paths = StackPaths(settings.state_dir)
        self.outlive_caller = outlive_caller
        self.start_timeout = start_timeout

    # --- inspecting ---------------------------------------------------------------------------------
    def supervisor_pid(self) -> int | None:
        """The pid of the running supervisor, or None."""
        return live_pid(self.paths.pid_file(SUPERVISOR))

    def running(self) -> bool:
        """Whether a supervisor of this state directory is running."""
        return self.supervisor_pid() is not None

    def status(self, timeout: float = 2.0) -> list[PartStatus]:
        """Each part's pid (when started by this stack), port and health right now."""
        statuses = []
        for part in stack_parts(self.settings):
            pid = live_pid(self.paths.pid_file(part.name))
            healthy, detail = part.health(timeout)
            if pid is None and healthy:
                detail = f"{detail}; not started by this stack"
            statuses.append(PartStatus(part.name, pid, part.port, healthy, detail))
        return statuses

    def last_failure(self) -> str | None:
        """Why the supervisor last stopped the stack on its own, if it did and has not restarted."""
        try:
            return self.paths.failure_file.read_text().strip() or None
        except OSError:
            return None

    # --- starting -----------------------------------------------------------------------------------
    def start(self, foreground: bool = False, on_ready: Callable[[], None] | None = None) -> bool:
        """Start the stack and wait until every part is healthy; False if it was already running.

        With ``foreground=True`` the supervisor runs in this process and the call returns only when
        the stack is stopped (SIGINT/SIGTERM, or ``highwater down`` from elsewhere); ``on_ready`` is
        called once it is healthy. Raises StackError with a message for the user when the stack
        cannot start; KeyboardInterrupt (also raised for SIGTERM while waiting) after stopping
        whatever had started.
        """
        if self.running():
            return False
        if foreground:
            Supervisor(self.settings, start_timeout=self.start_timeout).run(on_ready=on_ready)
            return True
        preflight(stack_parts(self.settings))
        self.paths.prepare()
        self.paths.failure_file.unlink(missing_ok=True)
        with _sigterm_as_interrupt():
            supervisor = self._spawn_supervisor()
            try:
                self._wait_ready(supervisor)
            except BaseException:
                supervisor.terminate()
                try:
                    supervisor.wait(timeout=STOP_GRACE_S * 2)
                except subprocess.TimeoutExpired:
                    supervisor.kill()  # its parts get SIGTERM from the kernel (parent-death signal)
                    supervisor.wait()
                self.stop()
                raise
        if on_ready is not None:
            on_ready()
        return True

    def _spawn_supervisor(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "highwater.stack.supervisor", "--parent-pid", str(os.getpid())]
        if not self.outlive_caller:
            command.append("--stay-bound")
        with self.paths.log(SUPERVISOR).open("wb") as logfile:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=os.environ | settings_env(self.settings),
                start_new_session=True,  # Ctrl-C in the caller's terminal does not reach the stack
            )

    def _wait_ready(self, supervisor: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout + 2 * STOP_GRACE_S
        while True:
            code = supervisor.poll()
            if code is not None:
                reason = self.last_failure() or tail(self.paths.log(SUPERVISOR)) or "(no output)"
                raise StackError(f"the local stack did not start: {reason}")
            try:
                if self.paths.ready_file.read_text().strip() == str(supervisor.pid):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"the local stack did not become healthy in time; see {self.paths.logs_dir}:\n"
                    + tail(self.paths.log(SUPERVISOR))
                )
            time.sleep(0.05)

    # --- stopping -----------------------------------------------------------------------------------
    def stop(self, timeout: float = 3 * STOP_GRACE_S) -> bool:
        """Stop the supervisor and wait until every part is gone; False if nothing was running.

        Idempotent. Parts left by a supervisor that died abnormally are stopped as well.
        """
        supervisor = self.supervisor_pid()
        parts = [
            pid
            for part in stack_parts(self.settings)
            if (pid := live_pid(self.paths.pid_file(part.name))) is not None
        ]
        if supervisor is not None:
            signal_pid(supervisor, signal.SIGTERM)
            if wait_gone([supervisor, *parts], timeout):
                signal_pid(supervisor, signal.SIGKILL)
                wait_gone([supervisor], STOP_GRACE_S)
        leftovers = [pid for pid in parts if pid_alive(pid)]
        if leftovers:
            terminate(leftovers, STOP_GRACE_S)
        for name in [SUPERVISOR, *(p.name for p in stack_parts(self.settings))]:
            if live_pid(self.paths.pid_file(name)) is None:
                self.paths.pid_file(name).unlink(missing_ok=True)
        self.paths.ready_file.unlink(missing_ok=True)
        return supervisor is not None or bool(parts)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as SIGINT does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
