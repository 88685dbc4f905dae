"""The supervisor: the one process that owns the local stack's parts.

It starts every part as its child, tied to it with ``PR_SET_PDEATHSIG`` (see
:mod:`highwater.stack.deathsig`), so no part outlives it, even when it is killed with SIGKILL. It
waits until every part is healthy, writes ``run/ready``, then watches them. On SIGTERM, SIGINT or
SIGHUP it stops the parts (SIGTERM, then SIGKILL after a grace period) and exits.

When a part exits on its own the supervisor stops the others and exits too, recording why in
``run/failure.txt``: the broker keeps its log in memory and Redis holds state derived from it, so
restarting one part alone would leave them inconsistent.

``highwater up`` runs it detached (``python -m highwater.stack.supervisor``, settings passed as
``HIGHWATER_*`` variables); ``highwater up --foreground`` runs :class:`Supervisor` in the CLI process.

Example:
    $ HIGHWATER_STATE_DIR=/tmp/hw python -m highwater.stack.supervisor
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import IO

from highwater.settings import Settings, get_settings
from highwater.stack import deathsig
from highwater.stack.parts import Part, StackError, preflight, stack_parts
from highwater.stack.procs import SUPERVISOR, StackPaths, tail, write_atomic, write_pid

log = logging.getLogger("highwater.stack.supervisor")

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_POLL_S = 0.1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Supervisor:
    """Starts, watches and stops the parts of the local stack for ``settings``.

    Example:
        >>> Supervisor(Settings(state_dir="/tmp/hw")).run(on_ready=lambda: print("up"))  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, start_timeout: float = START_TIMEOUT_S) -> None:
        self.settings = settings
        self.paths = StackPaths(settings.state_dir)
        self.parts = stack_parts(settings)
        self.start_timeout = start_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._stop_requested = False

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Ask the supervisor to stop the stack (signal-handler compatible)."""
        self._stop_requested = True

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start the parts, wait for health, watch them until asked to stop, then stop them.

        Returns when stopped on request (also when the request came during start-up). Raises
        StackError when a part cannot start, does not become healthy, or exits on its own; the
        parts are stopped and the reason is in ``run/failure.txt`` as well.
        """
        self.paths.prepare()
        self.paths.failure_file.unlink(missing_ok=True)
        self.paths.ready_file.unlink(missing_ok=True)
        write_pid(self.paths.pid_file(SUPERVISOR), os.getpid())
        previous = {sig: signal.signal(sig, self.request_stop) for sig in _STOP_SIGNALS}
        try:
            commands = preflight(self.parts)
            for part in self.parts:
                if self._stop_requested:
                    return
                self._spawn(part, commands[part.name])
            if not self._wait_healthy():
                return
            write_atomic(self.paths.ready_file, f"{os.getpid()}\n")
            log.info("all parts healthy")
            if on_ready is not None:
                on_ready()
            self._watch()
        except StackError as exc:
            write_atomic(self.paths.failure_file, f"{exc}\n")
            log.error("%s", exc)
            raise
        finally:
            self._stop_children()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.paths.ready_file.unlink(missing_ok=True)
            self.paths.pid_file(SUPERVISOR).unlink(missing_ok=True)

    def _spawn(self, part: Part, command: list[str]) -> None:
        logfile = self.paths.log(part.name).open("wb")
        self._logs.append(logfile)
        wrapper = [sys.executable, "-I", "-S", deathsig.__file__, str(os.getpid()), "--"]
        log.info("starting %s: %s", part.name, " ".join(command))
        child = subprocess.Popen(
            wrapper + command,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=self.paths.state_dir,
            process_group=0,  # a Ctrl-C on the terminal reaches the supervisor only, which stops the parts
        )
        self._children[part.name] = child
        write_pid(self.paths.pid_file(part.name), child.pid)

    def _exited(self, part: Part, during: str) -> StackError | None:
        code = self._children[part.name].poll()
        if code is None:
            return None
        logfile = self.paths.log(part.name)
        last = tail(logfile) or "(empty)"
        return StackError(f"{part.name} exited with code {code} {during}; last lines of {logfile}:\n{last}")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.parts)
        details: dict[str, str] = {}
        while pending:
            if self._stop_requested:
                return False
            for part in list(pending):
                failure = self._exited(part, "during start-up")
                if failure:
                    raise failure
                healthy, details[part.name] = part.health(timeout=1.0)
                if healthy:
                    log.info("%s is healthy at %s (%s)", part.name, part.address, details[part.name])
                    pending.remove(part)
            if pending and time.monotonic() > deadline:
                lines = [
                    f"{p.name} is not healthy after {self.start_timeout:.0f} s ({details.get(p.name, '?')}); "
                    f"last lines of {self.paths.log(p.name)}:\n{tail(self.paths.log(p.name)) or '(empty)'}"
                    for p in pending
                ]
                raise StackError("\n".join(lines))
            if pending:
                time.sleep(_POLL_S)
        return True

    def _watch(self) -> None:
        while not self._stop_requested:
            for part in self.parts:
                failure = self._exited(part, "while the stack was running; stopped the other parts")
                if failure:
                    raise failure
            time.sleep(_POLL_S * 2)
        log.info("stop requested")

    def _stop_children(self) -> None:
        running = [c for c in reversed(self._children.values()) if c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop within %.0f s; killing it", child.pid, STOP_GRACE_S)
                child.kill()
                child.wait()
        for name in self._children:
            self.paths.pid_file(name).unlink(missing_ok=True)
        for logfile in self._logs:
            logfile.close()
        self._children.clear()
        self._logs.clear()
        if running:
            log.info("stopped %d part(s)", len(running))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached supervisor; exit code 0 after a requested stop, 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m highwater.stack.supervisor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--parent-pid", type=int, help="die with this parent until the stack is ready")
    parser.add_argument(
        "--stay-bound", action="store_true", help="keep dying with the parent after ready (test sessions)"
    )
    args = parser.parse_args(argv)
    if args.parent_pid:
        deathsig.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != args.parent_pid:
            return 1  # the parent died before the signal was armed: nobody wants this stack
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise

    def detach() -> None:
        if args.parent_pid and not args.stay_bound:
            deathsig.set_parent_death_signal(0)

    try:
        Supervisor(get_settings()).run(on_ready=detach)
    except StackError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
