"""Feature definitions: the one place that says what Highwater computes.

A feature is an aggregation of one entity's applied events over an event-time window. The semantics
(written out in ``docs/features.md``): a window feature of width W as of time T aggregates the entity's
applied events with ``event_time`` in (T-W, T]; count and sum over no events are 0; max and avg over no
events are null; ``seconds_since_last`` is T minus the latest event_time in the window, null if none.

The stream job, the online store, the gRPC server and the tests all read these definitions; adding a
feature is adding a line to ``FEATURES``.

Example:
    >>> from streams.features import REGISTRY
    >>> f = REGISTRY.feature("card_amount_sum_1h")
    >>> (f.entity, f.aggregation.value, f.field, f.window_ms)
    ('card', 'sum', 'amount', 3600000)
    >>> [e.name for e in REGISTRY.entities()]
    ['card', 'merchant']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, NamedTuple

TRANSACTIONS_TOPIC = "transactions"


class Aggregation(StrEnum):
    """How a feature folds the events of its window into one value."""

    COUNT = "count"
    SUM = "sum"
    MAX = "max"
    AVG = "avg"
    DISTINCT_COUNT = "distinct_count"
    SECONDS_SINCE_LAST = "seconds_since_last"

    @property
    def null_when_empty(self) -> bool:
        """Whether the value over no events is null (otherwise it is 0)."""
        return self not in (Aggregation.COUNT, Aggregation.SUM, Aggregation.DISTINCT_COUNT)

    @property
    def integral(self) -> bool:
        """Whether values are whole numbers (served as int64)."""
        return self in (Aggregation.COUNT, Aggregation.DISTINCT_COUNT)


@dataclass(frozen=True)
class Entity:
    """Something features describe, keyed by one field of the source events."""

    name: str
    key_field: str
    source_topic: str = TRANSACTIONS_TOPIC
    event_id_field: str = "transaction_id"
    time_field: str = "event_time"
    tile: timedelta | None = None
    """Width of the exact tiles the online store keeps of this entity's numeric fields (None: none).

    For entities whose ids see many events per window (merchants): a read folds a whole tile's values
    from one packed string instead of parsing each event (see :mod:`sinks.redis_online`). The values and
    their order are those of the raw events, so results are identical, bit for bit, with or without.
    """

    @property
    def tile_ms(self) -> int:
        """Tile width in milliseconds (0: no tiles)."""
        return int(self.tile.total_seconds() * 1000) if self.tile else 0


@dataclass(frozen=True)
class Feature:
    """One aggregation of one entity's events over a trailing event-time window."""

    name: str
    entity: str
    aggregation: Aggregation
    window: timedelta
    field: str | None = None
    description: str = ""

    @property
    def window_ms(self) -> int:
        """Window width in milliseconds."""
        return int(self.window.total_seconds() * 1000)

    def __post_init__(self) -> None:
        needs_field = self.aggregation not in (Aggregation.COUNT, Aggregation.SECONDS_SINCE_LAST)
        if needs_field and not self.field:
            raise ValueError(f"feature {self.name}: aggregation {self.aggregation.value} needs a field")
        if self.window <= timedelta(0):
            raise ValueError(f"feature {self.name}: window must be positive")


class EntityLayout(NamedTuple):
    """What one entity's online events carry in a generation: the fields, and the widest window kept.

    A generation records its layout when it is first written and keeps it, so code that adds a feature
    cannot misread older generations: a feature is served from a generation only when the layout holds
    it (see :meth:`missing`); otherwise it needs a replay into a new generation (a backfill).

    Example:
        >>> layout = REGISTRY.layout("card")
        >>> layout.fields, layout.max_window_ms
        (('amount', 'merchant_id'), 604800000)
        >>> REGISTRY.layout("merchant").tile_ms, REGISTRY.layout("merchant").tiled_fields
        (3600000, ('amount',))
        >>> layout.missing(Feature("card_channels_1h", "card", Aggregation.DISTINCT_COUNT,
        ...                        timedelta(hours=1), "channel"))
        "its field 'channel' is not among the fields the generation keeps online (amount, merchant_id)"
    """

    fields: tuple[str, ...]
    max_window_ms: int
    tile_ms: int = 0
    """Width of the exact tiles kept of ``tiled_fields`` (0: none; generations recorded before tiles)."""
    tiled_fields: tuple[str, ...] = ()
    """The numeric fields (those sums, maxima and averages fold) kept in tiles as well as in events."""

    def missing(self, feature: Feature) -> str | None:
        """Why the layout cannot serve ``feature``, or None when it can."""
        if feature.field and feature.field not in self.fields:
            kept = ", ".join(self.fields) or "none"
            return f"its field {feature.field!r} is not among the fields the generation keeps online ({kept})"
        if feature.window_ms > self.max_window_ms:
            return (
                f"its window ({feature.window_ms} ms) is wider than the generation keeps online "
                f"({self.max_window_ms} ms)"
            )
        return None


class FeatureRegistry:
    """Lookup over entities and features, with the validation callers need."""

    def __init__(self, entities: Iterable[Entity], features: Iterable[Feature]) -> None:
        self._entities = {e.name: e for e in entities}
        self._features: dict[str, Feature] = {}
        for feature in features:
            if feature.entity not in self._entities:
                raise ValueError(f"feature {feature.name}: unknown entity {feature.entity!r}")
            if feature.name in self._features:
                raise ValueError(f"feature {feature.name} is defined twice")
            self._features[feature.name] = feature
        self._fields = {name: self._collect_fields(name) for name in self._entities}
        self._by_topic: dict[str, list[Entity]] = {}
        for entity in self._entities.values():
            self._by_topic.setdefault(entity.source_topic, []).append(entity)

    def entities(self) -> list[Entity]:
        """All entities, in definition order."""
        return list(self._entities.values())

    def entity(self, name: str) -> Entity:
        """The entity called ``name``; KeyError if there is none."""
        return self._entities[name]

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; KeyError if there is none."""
        return self._features[name]

    def entities_of_topic(self, topic: str) -> list[Entity]:
        """Entities whose features are computed from ``topic``'s events."""
        return self._by_topic.get(topic, [])

    def features_of(self, entity: str) -> list[Feature]:
        """The entity's features, in definition order."""
        return [f for f in self._features.values() if f.entity == entity]

    def fields_of(self, entity: str) -> list[str]:
        """Event fields the entity's features read, in a stable order (the online payload layout)."""
        return self._fields[entity]

    def _collect_fields(self, entity: str) -> list[str]:
        fields: list[str] = []
        for feature in self.features_of(entity):
            if feature.field and feature.field not in fields:
                fields.append(feature.field)
        return fields

    def layout(self, entity: str) -> EntityLayout:
        """The online layout these definitions give ``entity`` (what a new generation records)."""
        tile_ms = self._entities[entity].tile_ms
        numeric = [
            f.field
            for f in self.features_of(entity)
            if f.field and f.aggregation in (Aggregation.SUM, Aggregation.MAX, Aggregation.AVG)
        ]
        fields = tuple(self.fields_of(entity))
        tiled = tuple(name for name in fields if name in numeric) if tile_ms else ()
        return EntityLayout(fields, self.max_window_ms(entity), tile_ms if tiled else 0, tiled)

    def unheld(self, layouts: Mapping[str, EntityLayout]) -> dict[str, str]:
        """Each feature a generation with ``layouts`` cannot serve, and why (see :class:`EntityLayout`).

        Example:
            >>> REGISTRY.unheld({"card": REGISTRY.layout("card")})["merchant_txn_count_1h"]
            "entity 'merchant' was added after the generation was created"
        """
        reasons = {}
        for feature in self._features.values():
            layout = layouts.get(feature.entity)
            reason = (
                layout.missing(feature)
                if layout is not None
                else f"entity {feature.entity!r} was added after the generation was created"
            )
            if reason:
                reasons[feature.name] = reason
        return reasons

    def payload_of(self, entity: str, event: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields the entity's features read from ``event``, as text (floats round-trip exactly)."""
        return payload(event, self.fields_of(entity))

    def max_window_ms(self, entity: str | None = None) -> int:
        """Widest window of one entity's features (or of all features)."""
        feats = self.features_of(entity) if entity else list(self._features.values())
        return max(f.window_ms for f in feats)

    def all_features(self) -> list[Feature]:
        """Every feature, in definition order."""
        return list(self._features.values())


def payload(event: Mapping[str, Any], fields: Iterable[str]) -> tuple[str, ...]:
    """``fields`` of ``event`` as the online store keeps them (see :func:`as_text`).

    Example:
        >>> payload({"amount": 0.1, "merchant_id": "m-1"}, ("amount", "merchant_id"))
        ('0.1', 'm-1')
    """
    return tuple(map(as_text, map(event.__getitem__, fields)))


def as_text(value: Any) -> str:
    """A field value as the online store keeps it: floats by ``repr`` (exact round trip), others by ``str``.

    Example:
        >>> as_text(0.1), as_text(7), as_text("m-1")
        ('0.1', '7', 'm-1')
    """
    return repr(value) if value.__class__ is float else str(value)


ENTITIES = [
    Entity("card", key_field="card_id"),
    # A busy merchant sees thousands of transactions a day; its 24 h sums read hourly tiles.
    Entity("merchant", key_field="merchant_id", tile=timedelta(hours=1)),
]

_M5, _H1, _H24, _D7 = timedelta(minutes=5), timedelta(hours=1), timedelta(hours=24), timedelta(days=7)
A = Aggregation

FEATURES = [
    Feature("card_txn_count_5m", "card", A.COUNT, _M5, description="Transactions in the last 5 minutes."),
    Feature("card_txn_count_1h", "card", A.COUNT, _H1, description="Transactions in the last hour."),
    Feature("card_txn_count_24h", "card", A.COUNT, _H24, description="Transactions in the last 24 hours."),
    Feature("card_amount_sum_1h", "card", A.SUM, _H1, "amount", "Amount spent in the last hour."),
    Feature("card_amount_sum_24h", "card", A.SUM, _H24, "amount", "Amount spent in the last 24 hours."),
    Feature("card_amount_max_24h", "card", A.MAX, _H24, "amount", "Largest amount in the last 24 hours."),
    Feature("card_amount_avg_7d", "card", A.AVG, _D7, "amount", "Mean amount over the last 7 days."),
    Feature(
        "card_distinct_merchants_24h",
        "card",
        A.DISTINCT_COUNT,
        _H24,
        "merchant_id",
        "Distinct merchants in the last 24 hours.",
    ),
    Feature(
        "card_seconds_since_last_txn",
        "card",
        A.SECONDS_SINCE_LAST,
        _D7,
        description="Seconds from the card's latest transaction (within 7 days) to the as-of time.",
    ),
    Feature("merchant_txn_count_1h", "merchant", A.COUNT, _H1, description="Transactions in the last hour."),
    Feature(
        "merchant_amount_sum_24h", "merchant", A.SUM, _H24, "amount", "Amount taken in the last 24 hours."
    ),
]

REGISTRY = FeatureRegistry(ENTITIES, FEATURES)
