"""Redis commands encoded by polars, many at once, for writers that send millions of arguments.

Packing commands one by one in Python (``hiredis.pack_command`` per command, a Python list per
command's arguments) costs a bulk writer more than Redis spends running them, and holds the GIL the
stream job's reader needs. Here the RESP encoding (``*<argc>``, then ``$<bytes>`` and the bytes of each
argument) is built by polars expressions over whole columns, and only finished round trips of encoded
commands reach Python. Arguments are text; lengths are counted in UTF-8 bytes, as RESP wants.

Example:
    >>> rows = pl.DataFrame({"key": ["a", "a", "b"], "score": [1, 2, 3], "member": ["x", "y", "z"]})
    >>> encoded = variadic(rows, group="key", head=literal("ZADD") + bulk(pl.col("key")), head_count=2,
    ...                    args=bulk(pl.col("score")) + bulk(pl.col("member")), arg_count=2)
    >>> [(payload[:21], count) for payload, count in round_trips(encoded, per_trip=10)]
    [(b'*6\\r\\n$4\\r\\nZADD\\r\\n$1\\r\\na\\r\\n', 2)]
"""

from __future__ import annotations

import polars as pl


def bulk(value: pl.Expr) -> pl.Expr:
    """Each value as a RESP bulk string: ``$<bytes>\\r\\n<text>\\r\\n``."""
    text = value.cast(pl.String)
    return pl.concat_str(
        pl.lit("$"), text.str.len_bytes().cast(pl.String), pl.lit("\r\n"), text, pl.lit("\r\n")
    )


def literal(*args: str | int) -> pl.Expr:
    """Constant arguments, encoded as :func:`bulk` encodes each."""
    texts = [str(arg) for arg in args]
    return pl.lit("".join(f"${len(t.encode())}\r\n{t}\r\n" for t in texts))


def variadic(
    rows: pl.DataFrame, group: str, head: pl.Expr, head_count: int, args: pl.Expr, arg_count: int | pl.Expr
) -> pl.Series:
    """One command per value of ``rows[group]`` (in first-seen order): ``head`` (``head_count``
    arguments, evaluated on the group's first row), then each of the group's rows' ``args`` (``arg_count``
    arguments per row), encoded."""
    counted = pl.lit(arg_count) if isinstance(arg_count, int) else arg_count
    commands = (
        rows.select(group, head=head, args=args, count=counted.cast(pl.Int64))
        .group_by(group, maintain_order=True)
        .agg(pl.col("head").first(), pl.col("args").str.join(""), pl.col("count").sum())
    )
    return commands.select(
        pl.concat_str(
            pl.lit("*"), (pl.col("count") + head_count).cast(pl.String), pl.lit("\r\n"), "head", "args"
        )
    ).to_series()


def round_trips(commands: pl.Series, per_trip: int) -> list[tuple[bytes, int]]:
    """``commands`` (encoded) joined ``per_trip`` at a time: each round trip's bytes and command count."""
    if commands.is_empty():
        return []
    trips = (
        commands.to_frame("command")
        .with_columns(trip=pl.int_range(pl.len()) // per_trip)
        .group_by("trip", maintain_order=True)
        .agg(pl.col("command").str.join("").cast(pl.Binary), pl.len())
    )
    return list(zip(trips["command"].to_list(), trips["len"].to_list(), strict=True))
