"""The ``highwater`` command line: one entry point, each command delegating to the module that owns it.

Imports happen inside commands so that ``highwater --help`` and light commands stay fast.

Example:
    $ highwater up && highwater produce --count 10000 && highwater run --until-end
    $ highwater serve &
    $ highwater features get card card-00001
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sinks.training_set_cli import feature_log_app, training_set

app = typer.Typer(
    no_args_is_help=True, help="Highwater: streaming features and fraud scores from a Kafka log."
)
features_app = typer.Typer(no_args_is_help=True, help="Read online features over gRPC.")
app.add_typer(features_app, name="features")
app.command("training-set")(training_set)
app.add_typer(feature_log_app, name="feature-log")
generations_app = typer.Typer(
    no_args_is_help=True, help="List, promote and drop generations (copies of derived state)."
)
app.add_typer(generations_app, name="generations")
models_app = typer.Typer(
    no_args_is_help=True, help="List fraud-model versions, promote one, roll back (the model store)."
)
app.add_typer(models_app, name="models")


@app.command()
def up(
    foreground: Annotated[bool, typer.Option(help="Stay attached; Ctrl-C stops the stack.")] = False,
) -> None:
    """Start the local stack (broker, schema registry, Redis) and wait until it is healthy."""
    from highwater.stack.cli import stack_up

    stack_up(foreground=foreground)


@app.command()
def down() -> None:
    """Stop the local stack and every process it started."""
    from highwater.stack.cli import stack_down

    stack_down()


@app.command()
def status() -> None:
    """Show which local parts are running and healthy, and the pipeline's counters."""
    from highwater.stack.cli import stack_status

    stack_status()


@app.command()
def topics() -> None:
    """Create the platform's topics (explicit configs) and register their schemas."""
    from highwater.bootstrap import bootstrap_log
    from highwater.settings import get_settings

    created = bootstrap_log(get_settings())
    typer.echo(f"created topics: {', '.join(created) or 'none (all existed)'}")


@app.command()
def produce(
    count: Annotated[int, typer.Option(help="Synthetic transactions to produce.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same stream.")] = 7,
    rate: Annotated[float, typer.Option(help="Events per second; 0 means as fast as possible.")] = 0.0,
    disorder_ms: Annotated[int, typer.Option(help="Most an on-time event is out of order, in ms.")] = 3_000,
    late_share: Annotated[float, typer.Option(help="Share of events delivered far beyond lateness.")] = 0.002,
    file: Annotated[Path | None, typer.Option(help="Produce a user's .jsonl or .csv file instead.")] = None,
    topic: Annotated[str, typer.Option(help="Topic for --file.")] = "transactions",
) -> None:
    """Produce a seeded synthetic stream with fraud scenarios, or validate and produce a file."""
    from streams.produce_cli import produce_command

    produce_command(
        count=count,
        seed=seed,
        rate=rate,
        disorder_ms=disorder_ms,
        late_share=late_share,
        file=file,
        topic=topic,
    )


@app.command()
def run(
    until_end: Annotated[
        bool, typer.Option(help="Stop at the end of the log instead of tailing it.")
    ] = False,
    generation: Annotated[str | None, typer.Option(help="Generation to write; default the live one.")] = None,
) -> None:
    """Run the stream job (online features and history); resumes from its generation's checkpoints."""
    from highwater.settings import get_settings
    from replay.generations import live_generation
    from streams.job import run_job

    settings = get_settings()
    chosen = generation or live_generation(settings)
    if chosen != settings.online.generation:
        settings = settings.for_generation(chosen)
    run_job(until_end=until_end, settings=settings)


@app.command("score-stream")
def score_stream(
    until_end: Annotated[
        bool, typer.Option(help="Stop at the end of the log instead of tailing it.")
    ] = False,
    max_wait_ms: Annotated[
        float, typer.Option(help="Most a record waits for the feature job to apply its card's earlier ones.")
    ] = 2_000,
) -> None:
    """Score every transaction into fraud-scores (Quix Streams app, at least once, keyed by id)."""
    from streams.scoring_app import score_stream_command

    score_stream_command(until_end=until_end, max_wait_ms=max_wait_ms)


@app.command("replay")
def replay_(
    generation: Annotated[str, typer.Option(help="New generation to rebuild (lowercase, digits, _ -).")],
    from_: Annotated[
        str, typer.Option("--from", help="earliest, an ISO-8601 time, or topic:partition:offset,...")
    ] = "earliest",
    to: Annotated[
        str | None, typer.Option(help="ISO-8601 time or topic:partition:offset,...; default the log end.")
    ] = None,
    targets: Annotated[
        str, typer.Option(help="What to rebuild: online, history or both.")
    ] = "online,history",
) -> None:
    """Rebuild state from the log into a new generation; re-running resumes it."""
    from replay.cli import replay_command

    replay_command(generation, from_, to, targets)


@generations_app.command("list")
def generations_list() -> None:
    """Show every generation and which one is live."""
    from replay.cli import generations_list_command

    generations_list_command()


@generations_app.command("promote")
def generations_promote(generation: Annotated[str, typer.Argument(help="Generation to make live.")]) -> None:
    """Make a generation live, atomically for readers."""
    from replay.cli import generations_promote_command

    generations_promote_command(generation)


@generations_app.command("drop")
def generations_drop(generation: Annotated[str, typer.Argument(help="Generation to delete.")]) -> None:
    """Delete a generation that is not live."""
    from replay.cli import generations_drop_command

    generations_drop_command(generation)


@models_app.command("list")
def models_list(
    lineage: Annotated[str | None, typer.Option(help="Only this lineage's versions.")] = None,
) -> None:
    """Show every model version (oldest first) and which one is live."""
    from sinks.model_store_cli import models_list_command

    models_list_command(lineage)


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="Model version to make live.")]) -> None:
    """Make a model version live (the previous one is remembered for rollback)."""
    from sinks.model_store_cli import models_promote_command

    models_promote_command(version)


@models_app.command("rollback")
def models_rollback() -> None:
    """Make the previously live model version live again."""
    from sinks.model_store_cli import models_rollback_command

    models_rollback_command()


@models_app.command("replay")
def models_replay(
    lineage: Annotated[str, typer.Option(help="New lineage to rebuild into (lowercase, digits, _ -).")],
    until: Annotated[
        str | None,
        typer.Option(help="A version (e.g. the live one), topic:partition:offset,...; default the log end."),
    ] = None,
) -> None:
    """Rebuild a model from the log into a new lineage (the learner job from the earliest offsets)."""
    from streams.learner_cli import models_replay_command

    models_replay_command(lineage=lineage, until=until)


@models_app.command("verify")
def models_verify(
    a: Annotated[str, typer.Argument(metavar="A", help="Model version (e.g. the live one).")],
    b: Annotated[str, typer.Argument(metavar="B", help="Model version to compare (e.g. its replay).")],
    probes: Annotated[
        int, typer.Option(help="Probe transactions: the first records of fraud-scores.")
    ] = 1_000,
    limit: Annotated[int, typer.Option(help="Differences to print.")] = 20,
) -> None:
    """Compare two model versions' predictions on a fixed probe set; exit 0 if identical, 1 if not."""
    from streams.learner_cli import models_verify_command

    models_verify_command(a=a, b=b, probes=probes, limit=limit)


@app.command()
def learn(
    until_end: Annotated[
        bool, typer.Option(help="Stop at the end of the log instead of tailing it.")
    ] = False,
    lineage: Annotated[str | None, typer.Option(help="Lineage to learn; default model.lineage.")] = None,
) -> None:
    """Run the learner job: the fraud model learns from fraud-labels; resumes from its latest version."""
    from streams.learner_cli import learn_command

    learn_command(until_end=until_end, lineage=lineage)


@app.command()
def serve() -> None:
    """Serve FeatureService and ScoringService over gRPC (with reflection and health checking)."""
    from serving.server import serve_forever

    serve_forever()


@features_app.command("get")
def features_get(
    entity: Annotated[str, typer.Argument(help="Entity, e.g. card or merchant.")],
    entity_ids: Annotated[list[str], typer.Argument(help="One or more entity ids.")],
    feature: Annotated[
        list[str] | None, typer.Option("--feature", "-f", help="Feature(s); default all.")
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="ISO-8601 time; default the pipeline's clock.")] = None,
) -> None:
    """Read online features of entity ids over gRPC and print them as a table."""
    from serving.cli import features_get_command

    features_get_command(entity=entity, entity_ids=entity_ids, features=feature or [], as_of=as_of)


@app.command("score")
def score(
    card_id: Annotated[
        str | None, typer.Option(help="Card of the transaction (required without --json).")
    ] = None,
    merchant_id: Annotated[str | None, typer.Option(help="Merchant (required without --json).")] = None,
    amount: Annotated[float | None, typer.Option(help="Amount (required without --json).")] = None,
    transaction_id: Annotated[str | None, typer.Option(help="Default: a new cli-... id.")] = None,
    customer_id: Annotated[str, typer.Option(help="Customer of the card.")] = "cli",
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "EUR",
    event_time: Annotated[str | None, typer.Option(help="ISO-8601 time or epoch ms; default now.")] = None,
    channel: Annotated[str | None, typer.Option(help="pos, ecom, atm, ...")] = None,
    mcc: Annotated[str | None, typer.Option(help="Merchant category code.")] = None,
    latitude: Annotated[float | None, typer.Option()] = None,
    longitude: Annotated[float | None, typer.Option()] = None,
    json_file: Annotated[
        str | None, typer.Option("--json", help="A JSON transaction (object) or batch (array); - is stdin.")
    ] = None,
) -> None:
    """Score a transaction over gRPC: fraud probability, model version, features and top reasons."""
    from serving.score_cli import score_command

    score_command(
        card_id=card_id,
        merchant_id=merchant_id,
        amount=amount,
        transaction_id=transaction_id,
        customer_id=customer_id,
        currency=currency,
        event_time=event_time,
        channel=channel,
        mcc=mcc,
        latitude=latitude,
        longitude=longitude,
        json_file=json_file,
    )


@app.command("verify")
def verify_(
    a: Annotated[str, typer.Argument(metavar="A", help="Generation to compare (e.g. the live one).")],
    b: Annotated[str, typer.Argument(metavar="B", help="Generation to compare it with (e.g. a replay).")],
    limit: Annotated[int, typer.Option(help="Differences to print.")] = 20,
) -> None:
    """Compare two generations (online state and history); exit 0 if identical, 1 if not, 2 on error."""
    from replay.verify_cli import verify_command

    verify_command(a, b, limit=limit)


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="Synthetic transactions in the demo stream.")] = 50_000,
) -> None:
    """Run everything once on the embedded stack and print a short report."""
    from highwater.demo import run_demo

    run_demo(count=count)


if __name__ == "__main__":
    app()
