"""The stream job writes field values to the online store as text; its vectorized path must give
exactly the text ``streams.features.as_text`` gives (the Lua reads numbers back from it, and the
scorer's pending events are built with as_text)."""

from __future__ import annotations

import random
import struct

import polars as pl

from streams.apply_sink import _field_texts
from streams.features import as_text


def test_doubles_print_as_repr_prints_them() -> None:
    rng = random.Random(2)
    values: list[float | None] = [round(rng.uniform(0, 1000), 2) for _ in range(20_000)]
    values += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(100_000)]
    values += [0.0, -0.0, None, 1e16, 9999999999999998.0, 1e-4, 9.999999999999999e-05, 5e-324]
    values += [1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), 0.1 + 0.2, 1e15 + 0.5]
    column = pl.Series(values, dtype=pl.Float64)
    assert _field_texts(column).to_list() == [as_text(v) for v in column.to_list()]


def test_text_and_integer_columns() -> None:
    text = pl.Series(["m-1", None, "café", ""], dtype=pl.String)
    assert _field_texts(text).to_list() == ["m-1", "None", "café", ""]
    integers = pl.Series([0, -5, 2**62, None], dtype=pl.Int64)
    assert _field_texts(integers).to_list() == ["0", "-5", str(2**62), "None"]
    flags = pl.Series([True, False, None], dtype=pl.Boolean)
    assert _field_texts(flags).to_list() == ["True", "False", "None"]
