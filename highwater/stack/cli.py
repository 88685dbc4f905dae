"""``highwater up | down | status``: the local stack from the command line.

Problems are reported as one clear message on stderr and exit code 1, never a traceback.

Example:
    $ highwater up            # returns once broker, registry, Redis and ClickHouse are healthy
    $ highwater status        # exit code 0 when every part is healthy, 1 otherwise
    $ highwater down
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from highwater.settings import Settings, get_settings
from highwater.stack.local import LocalStack, PartStatus
from highwater.stack.parts import StackError

_INTERRUPTED = 130


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def parts_table(statuses: list[PartStatus]) -> Table:
    """The parts of the stack as a rich table (part, pid, port, health, detail)."""
    table = Table(title="local stack", title_justify="left")
    table.add_column("part")
    table.add_column("pid", justify="right")
    table.add_column("port", justify="right")
    table.add_column("healthy")
    table.add_column("detail", overflow="fold")
    for s in statuses:
        health = "[green]yes[/]" if s.healthy else "[red]no[/]"
        table.add_row(s.name, str(s.pid) if s.pid else "-", str(s.port), health, escape(s.detail))
    return table


def _addresses(settings: Settings) -> str:
    return (
        f"broker {settings.broker_bootstrap}, schema registry {settings.schema_registry_url}, "
        f"redis {settings.redis_url}, clickhouse {settings.clickhouse_dsn}"
    )


def stack_up(foreground: bool) -> None:
    """Start the local stack and wait until it is healthy (``foreground``: stay until Ctrl-C)."""
    settings = get_settings()
    stack = LocalStack(settings)
    console = _console()
    if stack.running():
        console.print(
            f"the local stack in {settings.state_dir} is already running "
            f"(supervisor pid {stack.supervisor_pid()}); `highwater down` stops it",
            soft_wrap=True,
        )
        return

    def ready() -> None:
        console.print(f"local stack is up: {_addresses(settings)}", soft_wrap=True)
        console.print(f"logs in {stack.paths.logs_dir}", soft_wrap=True)
        if foreground:
            console.print("Ctrl-C stops it")

    if foreground:
        # The supervisor runs in this process: show its progress (which part starts, which is healthy).
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("httpx").setLevel(logging.WARNING)
    console.print(f"starting the local stack in {settings.state_dir} ...", soft_wrap=True)
    try:
        stack.start(foreground=foreground, on_ready=ready)
    except StackError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; stopped what had been started", _INTERRUPTED) from None
    if foreground:
        console.print("local stack stopped")


def stack_down() -> None:
    """Stop the local stack and wait until every process of it is gone (nothing to do is fine)."""
    settings = get_settings()
    if LocalStack(settings).stop():
        _console().print(f"stopped the local stack in {settings.state_dir}", soft_wrap=True)
    else:
        _console().print(f"the local stack in {settings.state_dir} is not running", soft_wrap=True)


def stack_status() -> None:
    """Print the parts table; exit code 0 when every part is healthy, 1 otherwise."""
    settings = get_settings()
    stack = LocalStack(settings)
    console = _console()
    statuses = stack.status()
    console.print(parts_table(statuses))
    failure = None if stack.running() else stack.last_failure()
    if failure:
        console.print(f"[red]last failure:[/] {escape(failure)}")
    healthy = all(s.healthy for s in statuses)
    if healthy:
        from streams.status import print_pipeline_status

        print_pipeline_status(settings, console)
    raise typer.Exit(0 if healthy else 1)
