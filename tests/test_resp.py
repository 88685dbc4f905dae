"""Commands encoded by polars (:mod:`sinks.resp`) are byte for byte what hiredis packs for the same
arguments: non-ASCII text (lengths in bytes), empty strings, numbers, groups split across round trips."""

from __future__ import annotations

import random

import hiredis
import polars as pl

from sinks.resp import bulk, literal, round_trips, variadic


def test_variadic_commands_are_what_hiredis_packs() -> None:
    rng = random.Random(3)
    alphabet = ["a", "Z", "0", " ", "é", "€", "😀", ":", "\x1f"]
    rows = pl.DataFrame(
        {
            "key": [f"k{rng.randrange(40)}" for _ in range(2_000)],
            "score": [rng.randrange(-(10**15), 10**15) for _ in range(2_000)],
            "member": ["".join(rng.choices(alphabet, k=rng.randrange(0, 12))) for _ in range(2_000)],
        }
    )
    encoded = variadic(
        rows,
        "key",
        literal("ZADD") + bulk(pl.col("key")),
        2,
        bulk(pl.col("score")) + bulk(pl.col("member")),
        2,
    )
    expected = []
    for key in rows.get_column("key").unique(maintain_order=True):
        group = rows.filter(pl.col("key") == key)
        args = [x for score, member in group.select("score", "member").iter_rows() for x in (score, member)]
        expected.append(hiredis.pack_command(("ZADD", key, *args)))
    trips = round_trips(encoded, per_trip=7)
    assert [count for _, count in trips] == [7] * (len(expected) // 7) + [len(expected) % 7] * (
        len(expected) % 7 > 0
    )
    assert b"".join(payload for payload, _ in trips) == b"".join(expected)


def test_a_per_row_argument_count() -> None:
    rows = pl.DataFrame({"group": [0, 0, 1], "text": ["a", "", "ü"], "extra": [True, False, True]})
    encoded = variadic(
        rows,
        "group",
        literal("CMD", 7),
        2,
        bulk(pl.col("text")) + pl.when(pl.col("extra")).then(literal("x")).otherwise(pl.lit("")),
        1 + pl.col("extra").cast(pl.Int64),
    )
    assert encoded.to_list() == [
        hiredis.pack_command(("CMD", 7, "a", "x", "")).decode(),
        hiredis.pack_command(("CMD", 7, "ü", "x")).decode(),
    ]
    assert round_trips(encoded.clear(), per_trip=3) == []
