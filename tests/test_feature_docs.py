"""docs/features.md states the catalogue and the entities; they must say what streams/features.py defines."""

from __future__ import annotations

import re
from pathlib import Path

from streams.features import REGISTRY, Feature

DOC = Path(__file__).resolve().parent.parent / "docs" / "features.md"
_UNITS_MS = {"min": 60_000, "h": 3_600_000, "days": 86_400_000}


def _table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table under ``## heading``, cells stripped of backticks."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[2:]]


def _window_ms(text: str) -> int:
    match = re.fullmatch(r"(\d+) (min|h|days)", text)
    assert match, f"window {text!r} is not '<n> min|h|days'"
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def _documented(feature: Feature) -> list[str]:
    return [feature.name, feature.entity, feature.aggregation.value, feature.field or ""]


def test_the_catalogue_lists_every_feature_as_defined() -> None:
    rows = _table("The catalogue")
    assert [row[:4] for row in rows] == [_documented(f) for f in REGISTRY.all_features()]
    assert [_window_ms(row[4]) for row in rows] == [f.window_ms for f in REGISTRY.all_features()]


def test_the_entities_table_matches_the_definitions() -> None:
    rows = _table("Entities")
    expected = [
        [e.name, e.key_field, topic, e.event_id_field, e.time_field]
        for e in REGISTRY.entities()
        for topic in [t for t in ("transactions", "fraud-labels") if e in REGISTRY.entities_of_topic(t)]
    ]
    assert rows == expected
