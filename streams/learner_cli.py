"""``highwater learn`` and ``highwater models replay|verify`` (registered in ``highwater/cli.py``).

Errors a user can fix (an unknown version, a lineage past the requested end, an unreachable store) print
``error: <message>`` and exit with status 2, without a traceback. ``models verify`` exits 0 when the
versions agree on every probe, 1 when they do not.

Example:
    $ highwater learn --until-end                  # learn up to the log end, save and promote a version
    $ highwater learn                              # tail the log (SIGTERM/Ctrl-C: checkpoint and stop)
    $ highwater models replay --lineage r1 --until 7
    $ highwater models verify 7 9                  # the live version and its replay
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import typer
from confluent_kafka import KafkaException

from highwater.settings import get_settings
from schemas.catalog import FRAUD_SCORES
from sinks.model_store import ModelStoreError, Offsets, model_store_from_settings

ERROR_EXIT_CODE = 2
DIFFERENT_EXIT_CODE = 1


@contextmanager
def _user_errors() -> Iterator[None]:
    """Known failures become one line on stderr and exit code 2."""
    from streams.learner_job import LearnerJobError

    try:
        yield
    except (LearnerJobError, ModelStoreError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    except (redis.RedisError, OSError, KafkaException) as error:
        typer.echo(f"error: cannot reach the model store or the broker: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None


def learn_command(*, until_end: bool, lineage: str | None) -> None:
    """Run the learner job; in tail mode SIGTERM and SIGINT save a checkpoint and stop it."""
    from streams.learner_job import describe, run_learner

    stop = threading.Event()
    if not until_end:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    with _user_errors():
        report = run_learner(
            get_settings(), lineage=lineage, until_end=until_end, stop=stop, show_progress=until_end
        )
    typer.echo(_json(describe(report)))


def parse_until(text: str | None) -> str | Offsets | None:
    """``7`` (a version), ``fraud-scores:0:120,fraud-labels:0:30`` (offsets) or None (the log end).

    Example:
        >>> parse_until("fraud-scores:0:120,fraud-labels:1:3")
        {'fraud-scores': {0: 120}, 'fraud-labels': {1: 3}}
        >>> parse_until("7")
        '7'
    """
    if text is None or text.isdigit():
        return text
    offsets: Offsets = {}
    for item in text.split(","):
        topic, _, rest = item.strip().rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not topic or not partition.isdigit() or not rest.isdigit():
            raise typer.BadParameter(f"{item!r} is not topic:partition:offset (or give a version number)")
        offsets.setdefault(topic, {})[int(partition)] = int(rest)
    return offsets


def models_replay_command(*, lineage: str, until: str | None) -> None:
    """Rebuild a model from the log into ``lineage`` up to a version, offsets, or the log end."""
    from streams.learner_job import describe, replay_model

    target = parse_until(until)
    with _user_errors():
        report = replay_model(get_settings(), lineage, until=target, show_progress=True)
    typer.echo(_json(describe(report)))
    if report.last is not None and isinstance(target, str):
        typer.echo(f"compare: highwater models verify {target} {report.last.version}")


def models_verify_command(*, a: str, b: str, probes: int, limit: int) -> None:
    """Compare versions ``a`` and ``b`` on the first ``probes`` records of the score topic ``a`` was
    learned from (``fraud-scores`` unless its lineage reads another)."""
    from streams.learner_core import LearnerCore
    from streams.learner_job import LearnerJobError
    from streams.model_verify import probes_from_log, verify_versions

    settings = get_settings()
    with _user_errors():
        store = model_store_from_settings(settings)
        try:
            state = store.load_state(a)
            topic = LearnerCore.from_bytes(state).options.score_topic if state is not None else FRAUD_SCORES
            probe_set = probes_from_log(settings, probes, topic=topic)
            if not probe_set:
                raise LearnerJobError(f"no score records on {topic} to probe the models with")
            result = verify_versions(store, a, b, probe_set)
        finally:
            store.close()
    for difference in result.differences[:limit]:
        typer.echo(f"{difference.probe}\t{difference.what}\t{difference.a!r}\t{difference.b!r}")
    verdict = "identical" if result.identical else f"{len(result.differences)} difference(s)"
    typer.echo(f"versions {a} and {b} on {result.probes} probe(s): {verdict}")
    if not result.identical:
        raise typer.Exit(DIFFERENT_EXIT_CODE)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
