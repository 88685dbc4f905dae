"""A seeded synthetic card-payment stream with labelled fraud, in the order it reaches the log.

The same seed and parameters give the same events in the same order (everything is drawn from one
``random.Random(seed)``; Python guarantees its seeding and ``random()`` across versions, and the project
pins Python 3.11 for the rest), so demos, benchmarks and tests can name a stream by its seed.

Population:
    Customers live in European cities (home coordinates jittered around the city); one in five has two
    cards. Merchants have a category (MCC) that fixes the channel (``pos``, ``ecom`` or ``atm``) and a
    log-normal amount distribution; shops and ATMs sit in a city, online merchants anywhere. Nearly all
    amounts are in EUR; a few foreign online merchants charge GBP or USD. Every card has a handful of
    usual merchants (mostly near home) and an activity level; transaction times follow a diurnal
    pattern (busy at lunch and in the evening, quiet at night, hours in UTC). A ``pos``/``atm``
    transaction is located at its merchant, an ``ecom`` one at the buyer's device (home, for legit use).

Fraud scenarios (about ``fraud_share`` of all transactions, split by ``scenario_weights``):
    1. ``card_testing``: a stolen card makes 4-12 small online payments (0.50-5.00) at 3-6 online
       merchants, 15 s to 2 min apart, then one large online payment (median 900) 1-10 min later, all
       from a device far outside Europe.
    2. ``account_takeover``: a customer's card suddenly makes 2-5 large online payments (median 1,200,
       at least 150) 5-90 min apart at high-value online merchants outside its usual set, from a device
       far from home.
    3. ``compromised_merchant``: a shop is skimmed during an 8-hour window. Cards of its city that pay
       there during the window (legit payments) later get 1-3 fraudulent payments each: cash withdrawals
       at an ATM in another city or large online payments, between 30% and 90% of the remaining span
       after the window (1-2.5 days later with the default 3-day span).
    Every fraudulent transaction is labelled ``is_fraud=true`` 1-10 days after it (chargeback 60%,
    customer_report 25%, analyst 15%); a ``legit_label_share`` sample of legit ones is labelled
    ``is_fraud=false`` by an analyst, also 1-10 days later.

Delivery order:
    An on-time transaction is delivered at ``event_time + U[0, disorder_ms]``, so any transaction
    delivered after another is at most ``disorder_ms`` older than it. A ``late_share`` of transactions
    gets an extra delay drawn from ``late_delay_ms`` (default 10 min to 2 h, far beyond the stream's
    ``max_out_of_orderness_ms + allowed_lateness_ms``). Labels are delivered at ``label_time``. Iterating
    a stream yields ``(topic, record)`` in delivery order; everything is keyed by ``card_id`` when
    produced, so all events of a card share a partition.

Example:
    >>> from streams.synthetic import SyntheticStream
    >>> stream = SyntheticStream(seed=7, count=2_000)
    >>> len(stream.transactions())
    2000
    >>> topic, record = next(iter(stream))
    >>> topic
    'transactions'
    >>> stream.transactions() == SyntheticStream(seed=7, count=2_000).transactions()
    True
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from schemas.catalog import FRAUD_LABELS, TRANSACTIONS

DEFAULT_START_MS = 1_772_409_600_000
"""2026-03-02T00:00:00Z: the default start of the event-time span."""
SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DEFAULT_SPAN_MS = 3 * DAY_MS
DEFAULT_LATE_DELAY_MS = (10 * MINUTE_MS, 2 * HOUR_MS)

CARD_TESTING = "card_testing"
ACCOUNT_TAKEOVER = "account_takeover"
COMPROMISED_MERCHANT = "compromised_merchant"
SCENARIOS = (CARD_TESTING, ACCOUNT_TAKEOVER, COMPROMISED_MERCHANT)


@dataclass(frozen=True)
class _City:
    name: str
    lat: float
    lon: float
    weight: float


CITIES = (
    _City("Berlin", 52.520, 13.405, 3.0),
    _City("Paris", 48.857, 2.352, 3.0),
    _City("Madrid", 40.417, -3.704, 2.5),
    _City("Rome", 41.903, 12.496, 2.0),
    _City("Milan", 45.464, 9.190, 1.5),
    _City("Munich", 48.137, 11.575, 1.5),
    _City("Amsterdam", 52.370, 4.895, 1.2),
    _City("Vienna", 48.208, 16.373, 1.0),
    _City("Brussels", 50.850, 4.352, 0.8),
    _City("Lisbon", 38.722, -9.139, 0.8),
    _City("Dublin", 53.350, -6.260, 0.6),
)
# Where stolen credentials are used from: all more than 4,000 km from every home city.
FRAUD_ORIGINS = (
    _City("Lagos", 6.524, 3.379, 1.0),
    _City("Jakarta", -6.208, 106.846, 1.0),
    _City("Sao Paulo", -23.551, -46.633, 1.0),
    _City("Manila", 14.600, 120.984, 1.0),
    _City("Ho Chi Minh City", 10.823, 106.630, 1.0),
    _City("Lima", -12.046, -77.043, 1.0),
)


@dataclass(frozen=True)
class Category:
    """A merchant category: its MCC, channel, log-normal amount (median, sigma) and share of merchants."""

    mcc: str
    label: str
    channel: str
    median: float
    sigma: float
    weight: float


CATEGORIES = (
    Category("5411", "grocery", "pos", 28.0, 0.7, 0.20),
    Category("5812", "restaurant", "pos", 22.0, 0.6, 0.13),
    Category("5814", "fast_food", "pos", 9.0, 0.5, 0.09),
    Category("5541", "fuel", "pos", 55.0, 0.35, 0.07),
    Category("5912", "pharmacy", "pos", 15.0, 0.6, 0.05),
    Category("5311", "department_store", "pos", 60.0, 0.8, 0.05),
    Category("5999", "misc_retail", "pos", 25.0, 0.9, 0.06),
    Category("4121", "taxi", "pos", 18.0, 0.5, 0.04),
    Category("6011", "atm", "atm", 100.0, 0.0, 0.06),
    Category("5968", "subscription", "ecom", 12.0, 0.5, 0.07),
    Category("5964", "online_retail", "ecom", 45.0, 0.9, 0.10),
    Category("5732", "electronics", "ecom", 180.0, 0.9, 0.04),
    Category("4511", "airline", "ecom", 320.0, 0.6, 0.02),
    Category("7011", "hotel", "ecom", 210.0, 0.6, 0.02),
)
_HIGH_VALUE_MCCS = frozenset({"5732", "5964", "4511", "7011"})
_ATM_AMOUNTS = (20.0, 50.0, 100.0, 200.0, 300.0)
_ATM_WEIGHTS = (0.25, 0.35, 0.25, 0.1, 0.05)
# Relative activity per UTC hour of day: quiet nights, a lunch peak and an evening peak.
DIURNAL = (
    0.15, 0.08, 0.05, 0.04, 0.05, 0.10, 0.30, 0.60, 0.90, 1.00, 1.00, 1.10,
    1.30, 1.20, 1.00, 1.00, 1.10, 1.30, 1.40, 1.30, 1.10, 0.90, 0.60, 0.30,
)  # fmt: skip
_LABEL_SOURCES = ("chargeback", "customer_report", "analyst")
_LABEL_SOURCE_WEIGHTS = (0.60, 0.25, 0.15)


@dataclass(frozen=True)
class Merchant:
    """A merchant: id, category, currency, where it is (None for online merchants) and how busy it is."""

    merchant_id: str
    category: Category
    currency: str
    city: _City | None
    lat: float | None
    lon: float | None
    popularity: float


@dataclass(frozen=True)
class Card:
    """A card of a customer, with the customer's home, the card's activity level and usual merchants."""

    card_id: str
    customer_id: str
    home: _City
    lat: float
    lon: float
    activity: float
    usual: tuple[int, ...]
    usual_cum: tuple[float, ...]


@dataclass(frozen=True)
class Delivery:
    """One record as written to the log: its topic, value, simulated write time and whether it is late."""

    topic: str
    record: dict[str, Any]
    delivery_ms: int
    late: bool


@dataclass(frozen=True)
class StreamSummary:
    """Counts and span of a generated stream (what ``highwater produce`` prints)."""

    transactions: int
    labels: int
    fraud: int
    late: int
    first_event_ms: int | None
    last_event_ms: int | None
    by_scenario: dict[str, int] = field(default_factory=dict)

    @property
    def fraud_share(self) -> float:
        """Fraudulent transactions over all transactions."""
        return self.fraud / self.transactions if self.transactions else 0.0

    @property
    def late_share(self) -> float:
        """Late-delivered transactions over all transactions."""
        return self.late / self.transactions if self.transactions else 0.0


@dataclass
class _Txn:
    card: Card
    merchant: Merchant
    amount: float
    event_time: int
    lat: float | None
    lon: float | None
    scenario: str | None = None
    seq: int = 0


class SyntheticStream:
    """A deterministic stream of transactions and fraud labels; see the module docstring for the rules.

    Events are generated on first use and kept in memory (about 1 KB per transaction).

    Example:
        >>> s = SyntheticStream(seed=1, count=5_000, late_share=0.01)
        >>> summary = s.summary()
        >>> (summary.transactions, 0.01 <= summary.fraud_share <= 0.03)
        (5000, True)
        >>> sorted(s.scenarios().values())[0] in SCENARIOS
        True
    """

    def __init__(
        self,
        seed: int,
        count: int,
        *,
        start_ms: int = DEFAULT_START_MS,
        span_ms: int = DEFAULT_SPAN_MS,
        n_cards: int | None = None,
        n_merchants: int | None = None,
        disorder_ms: int = 3_000,
        late_share: float = 0.002,
        late_delay_ms: tuple[int, int] = DEFAULT_LATE_DELAY_MS,
        fraud_share: float = 0.02,
        scenario_weights: tuple[float, float, float] = (0.45, 0.25, 0.30),
        legit_label_share: float = 0.01,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if start_ms <= 0 or span_ms < HOUR_MS:
            raise ValueError("start_ms must be positive and span_ms at least one hour")
        if disorder_ms < 0:
            raise ValueError(f"disorder_ms must be >= 0, got {disorder_ms}")
        if not 0.0 <= late_share <= 1.0:
            raise ValueError(f"late_share must be within [0, 1], got {late_share}")
        if not 0 <= late_delay_ms[0] <= late_delay_ms[1]:
            raise ValueError(f"late_delay_ms must be (min, max) with 0 <= min <= max, got {late_delay_ms}")
        if not 0.0 <= fraud_share <= 0.2:
            raise ValueError(f"fraud_share must be within [0, 0.2], got {fraud_share}")
        if len(scenario_weights) != 3 or min(scenario_weights) < 0 or sum(scenario_weights) <= 0:
            raise ValueError("scenario_weights must be three non-negative weights, not all zero")
        if not 0.0 <= legit_label_share <= 1.0:
            raise ValueError(f"legit_label_share must be within [0, 1], got {legit_label_share}")
        self.seed = seed
        self.count = count
        self.start_ms = start_ms
        self.span_ms = span_ms
        self.n_cards = n_cards if n_cards is not None else max(20, count // 20)
        self.n_merchants = n_merchants if n_merchants is not None else max(40, count // 50)
        if self.n_cards < 2:
            raise ValueError(f"n_cards must be >= 2, got {self.n_cards}")
        if self.n_merchants < len(CATEGORIES):
            raise ValueError(f"n_merchants must be >= {len(CATEGORIES)} (one per category)")
        self.disorder_ms = disorder_ms
        self.late_share = late_share
        self.late_delay_ms = late_delay_ms
        self.fraud_share = fraud_share
        self.scenario_weights = scenario_weights
        self.legit_label_share = legit_label_share

    @property
    def end_ms(self) -> int:
        """Exclusive end of the event-time span."""
        return self.start_ms + self.span_ms

    # --- public views ---------------------------------------------------------------------------------
    def transactions(self) -> list[dict[str, Any]]:
        """Every transaction in event-time order (ties by transaction id)."""
        return self._generated[0]

    def labels(self) -> list[dict[str, Any]]:
        """Every fraud label in label-time order."""
        return self._generated[1]

    def deliveries(self) -> list[Delivery]:
        """Every record in delivery order, with its simulated write time and lateness flag."""
        return self._generated[2]

    def scenarios(self) -> dict[str, str]:
        """Fraudulent transaction id → the scenario that produced it."""
        return self._generated[3]

    def summary(self) -> StreamSummary:
        """Counts and event-time span of the stream."""
        txns = self.transactions()
        scenarios = self.scenarios()
        return StreamSummary(
            transactions=len(txns),
            labels=len(self.labels()),
            fraud=len(scenarios),
            late=sum(1 for d in self.deliveries() if d.late),
            first_event_ms=txns[0]["event_time"] if txns else None,
            last_event_ms=txns[-1]["event_time"] if txns else None,
            by_scenario=dict(Counter(scenarios.values())),
        )

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(topic, record)`` pairs in delivery order."""
        for delivery in self.deliveries():
            yield delivery.topic, delivery.record

    def __len__(self) -> int:
        """Records delivered: transactions plus labels."""
        return len(self.deliveries())

    # --- generation -----------------------------------------------------------------------------------
    @cached_property
    def _generated(
        self,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Delivery], dict[str, str]]:
        rng = random.Random(self.seed)
        merchants = self._merchants(rng)
        cards = self._cards(rng, merchants)
        txns = self._scenario_transactions(rng, cards, merchants)
        txns.extend(self._legit_transactions(rng, cards, merchants, self.count - len(txns)))
        for seq, txn in enumerate(txns):
            txn.seq = seq
        txns.sort(key=lambda t: (t.event_time, t.seq))

        width = max(8, len(str(len(txns))))
        records: list[dict[str, Any]] = []
        scenarios: dict[str, str] = {}
        for i, txn in enumerate(txns, start=1):
            transaction_id = f"txn-{i:0{width}d}"
            record: dict[str, Any] = {
                "transaction_id": transaction_id,
                "card_id": txn.card.card_id,
                "customer_id": txn.card.customer_id,
                "merchant_id": txn.merchant.merchant_id,
                "amount": txn.amount,
                "currency": txn.merchant.currency,
                "event_time": txn.event_time,
                "channel": txn.merchant.category.channel,
                "mcc": txn.merchant.category.mcc,
                "latitude": txn.lat,
                "longitude": txn.lon,
            }
            records.append(record)
            if txn.scenario is not None:
                scenarios[transaction_id] = txn.scenario

        labels = self._labels(rng, records, scenarios)
        deliveries = self._deliveries(rng, records, labels)
        return records, labels, deliveries, scenarios

    def _merchants(self, rng: random.Random) -> list[Merchant]:
        city_weights = [c.weight for c in CITIES]
        category_weights = [c.weight for c in CATEGORIES]
        merchants: list[Merchant] = []
        for i in range(self.n_merchants):
            # The first merchants cover every category once, so each scenario finds the merchants it needs.
            category = CATEGORIES[i] if i < len(CATEGORIES) else rng.choices(CATEGORIES, category_weights)[0]
            popularity = rng.paretovariate(1.5)
            if category.channel == "ecom":
                # A few foreign online shops charge in their own currency; they are niche, so less busy.
                foreign = rng.random() < 0.1
                currency = rng.choice(("GBP", "USD")) if foreign else "EUR"
                popularity = popularity / 2 if foreign else popularity
                merchants.append(
                    Merchant(f"merchant-{i + 1:05d}", category, currency, None, None, None, popularity)
                )
            else:
                city = rng.choices(CITIES, city_weights)[0]
                lat, lon = _jitter(rng, city, 0.08)
                merchants.append(
                    Merchant(f"merchant-{i + 1:05d}", category, "EUR", city, lat, lon, popularity)
                )
        return merchants

    def _cards(self, rng: random.Random, merchants: list[Merchant]) -> list[Card]:
        city_weights = [c.weight for c in CITIES]
        local: dict[str, list[int]] = {}
        online: list[int] = []
        for idx, m in enumerate(merchants):
            if m.city is None:
                online.append(idx)
            else:
                local.setdefault(m.city.name, []).append(idx)
        anywhere = [i for ids in local.values() for i in ids]
        pools = {name: _Pool(ids, merchants) for name, ids in local.items()}
        fallback, online_pool = _Pool(anywhere, merchants), _Pool(online, merchants)
        cards: list[Card] = []
        customer = 0
        while len(cards) < self.n_cards:
            customer += 1
            home = rng.choices(CITIES, city_weights)[0]
            lat, lon = _jitter(rng, home, 0.05)
            n = 2 if rng.random() < 0.2 else 1
            for _ in range(min(n, self.n_cards - len(cards))):
                usual = pools.get(home.name, fallback).sample(rng, rng.randint(4, 9))
                usual += online_pool.sample(rng, rng.randint(1, 3))
                weights = [merchants[i].popularity for i in usual]
                cards.append(
                    Card(
                        card_id=f"card-{len(cards) + 1:05d}",
                        customer_id=f"cust-{customer:05d}",
                        home=home,
                        lat=lat,
                        lon=lon,
                        activity=rng.lognormvariate(0.0, 0.8),
                        usual=tuple(usual),
                        usual_cum=tuple(_cumulative(weights)),
                    )
                )
        return cards

    def _legit_transactions(
        self, rng: random.Random, cards: list[Card], merchants: list[Merchant], n: int
    ) -> list[_Txn]:
        card_cum = _cumulative([c.activity for c in cards])
        all_cum = _cumulative([m.popularity for m in merchants])
        peak = max(DIURNAL)
        txns: list[_Txn] = []
        for _ in range(n):
            card = cards[bisect.bisect_right(card_cum, rng.random() * card_cum[-1])]
            while True:
                event_time = self.start_ms + int(rng.random() * self.span_ms)
                if rng.random() * peak < DIURNAL[(event_time // HOUR_MS) % 24]:
                    break
            if rng.random() < 0.85:
                pick = bisect.bisect_right(card.usual_cum, rng.random() * card.usual_cum[-1])
                merchant = merchants[card.usual[pick]]
            else:
                merchant = merchants[bisect.bisect_right(all_cum, rng.random() * all_cum[-1])]
            txns.append(self._legit_txn(rng, card, merchant, event_time))
        return txns

    def _legit_txn(self, rng: random.Random, card: Card, merchant: Merchant, event_time: int) -> _Txn:
        if merchant.lat is None or merchant.lon is None:
            lat, lon = _jitter(rng, _City("home", card.lat, card.lon, 1.0), 0.02)
            return _Txn(card, merchant, _amount(rng, merchant.category), event_time, lat, lon)
        amount = _amount(rng, merchant.category)
        return _Txn(card, merchant, amount, event_time, merchant.lat, merchant.lon)

    def _scenario_transactions(
        self, rng: random.Random, cards: list[Card], merchants: list[Merchant]
    ) -> list[_Txn]:
        budget = round(self.count * self.fraud_share)
        total_weight = sum(self.scenario_weights)
        testing = round(budget * self.scenario_weights[0] / total_weight)
        takeover = min(budget - testing, round(budget * self.scenario_weights[1] / total_weight))
        compromise = budget - testing - takeover
        online = [m for m in merchants if m.city is None]
        high_value = [m for m in online if m.category.mcc in _HIGH_VALUE_MCCS]
        txns: list[_Txn] = []
        made = self._compromised_merchants(rng, cards, merchants, high_value, compromise, txns)
        # Budget a compromise could not use (too few cards near any shop) goes to card testing.
        testing += compromise - made
        while testing > 0:
            burst = self._card_testing(rng, rng.choice(cards), online, high_value)[:testing]
            testing -= len(burst)
            txns.extend(burst)
        while takeover > 0:
            burst = self._account_takeover(rng, rng.choice(cards), merchants, high_value)[:takeover]
            takeover -= len(burst)
            txns.extend(burst)
        return txns

    def _card_testing(
        self, rng: random.Random, card: Card, online: list[Merchant], high_value: list[Merchant]
    ) -> list[_Txn]:
        origin = rng.choice(FRAUD_ORIGINS)
        lat, lon = _jitter(rng, origin, 0.1)
        testers = rng.sample(online, min(len(online), rng.randint(3, 6)))
        t = self.start_ms + int(rng.random() * max(1, self.span_ms - HOUR_MS))
        burst: list[_Txn] = []
        for _ in range(rng.randint(4, 12)):
            amount = round(rng.uniform(0.5, 5.0), 2)
            burst.append(_Txn(card, rng.choice(testers), amount, self._clip(t), lat, lon, CARD_TESTING))
            t += rng.randint(15 * SECOND_MS, 2 * MINUTE_MS)
        t += rng.randint(MINUTE_MS, 10 * MINUTE_MS)
        amount = round(max(150.0, rng.lognormvariate(math.log(900.0), 0.5)), 2)
        burst.append(_Txn(card, rng.choice(high_value), amount, self._clip(t), lat, lon, CARD_TESTING))
        return burst

    def _account_takeover(
        self, rng: random.Random, card: Card, merchants: list[Merchant], high_value: list[Merchant]
    ) -> list[_Txn]:
        usual = {merchants[i].merchant_id for i in card.usual}
        new = [m for m in high_value if m.merchant_id not in usual] or high_value
        origin = rng.choice(FRAUD_ORIGINS)
        lat, lon = _jitter(rng, origin, 0.1)
        t = self.start_ms + int(rng.random() * max(1, self.span_ms - 8 * HOUR_MS))
        burst: list[_Txn] = []
        for _ in range(rng.randint(2, 5)):
            amount = round(max(150.0, rng.lognormvariate(math.log(1_200.0), 0.6)), 2)
            burst.append(_Txn(card, rng.choice(new), amount, self._clip(t), lat, lon, ACCOUNT_TAKEOVER))
            t += rng.randint(5 * MINUTE_MS, 90 * MINUTE_MS)
        return burst

    def _compromised_merchants(
        self,
        rng: random.Random,
        cards: list[Card],
        merchants: list[Merchant],
        high_value: list[Merchant],
        budget: int,
        out: list[_Txn],
    ) -> int:
        """Skim shops until ``budget`` fraudulent transactions exist; returns how many were made."""
        shops: dict[str, list[Merchant]] = {}
        atms: list[Merchant] = []
        for m in merchants:
            if m.category.channel == "pos" and m.city is not None:
                shops.setdefault(m.city.name, []).append(m)
            elif m.category.channel == "atm":
                atms.append(m)
        by_city: dict[str, list[Card]] = {}
        for card in cards:
            by_city.setdefault(card.home.name, []).append(card)
        made = 0
        attempts = 0
        while made < budget and attempts < 50 + 10 * budget:
            attempts += 1
            anchor = rng.choice(cards)
            if anchor.home.name not in shops:
                continue
            shop = rng.choice(shops[anchor.home.name])
            neighbours = by_city[anchor.home.name]
            victims = rng.sample(neighbours, min(len(neighbours), rng.randint(5, 15), budget - made))
            window_start = self.start_ms + int(rng.uniform(0.05, 0.25) * self.span_ms)
            window_end = window_start + 8 * HOUR_MS
            remaining = self.end_ms - window_end
            for card in victims:
                if made >= budget:
                    break
                visit = window_start + int(rng.random() * 8 * HOUR_MS)
                out.append(self._legit_txn(rng, card, shop, self._clip(visit)))
                t = window_end + int(rng.uniform(0.3, 0.9) * remaining)
                for _ in range(min(rng.randint(1, 3), budget - made)):
                    out.append(self._cashout(rng, card, shop, atms, high_value, self._clip(t)))
                    made += 1
                    t += rng.randint(2 * MINUTE_MS, 60 * MINUTE_MS)
        return made

    def _cashout(
        self,
        rng: random.Random,
        card: Card,
        shop: Merchant,
        atms: list[Merchant],
        high_value: list[Merchant],
        event_time: int,
    ) -> _Txn:
        elsewhere = [m for m in atms if m.city is not None and m.city != shop.city]
        if elsewhere and rng.random() < 0.5:
            atm = rng.choice(elsewhere)
            amount = float(rng.choice((200, 300, 400, 500)))
            return _Txn(card, atm, amount, event_time, atm.lat, atm.lon, COMPROMISED_MERCHANT)
        lat, lon = _jitter(rng, rng.choice(FRAUD_ORIGINS), 0.1)
        amount = round(max(100.0, rng.lognormvariate(math.log(700.0), 0.5)), 2)
        return _Txn(card, rng.choice(high_value), amount, event_time, lat, lon, COMPROMISED_MERCHANT)

    def _labels(
        self, rng: random.Random, records: list[dict[str, Any]], scenarios: dict[str, str]
    ) -> list[dict[str, Any]]:
        labels: list[dict[str, Any]] = []
        for record in records:
            fraud = record["transaction_id"] in scenarios
            if not fraud and rng.random() >= self.legit_label_share:
                continue
            source = rng.choices(_LABEL_SOURCES, _LABEL_SOURCE_WEIGHTS)[0] if fraud else "analyst"
            labels.append(
                {
                    "transaction_id": record["transaction_id"],
                    "card_id": record["card_id"],
                    "is_fraud": fraud,
                    "label_time": record["event_time"] + rng.randint(DAY_MS, 10 * DAY_MS),
                    "source": source,
                }
            )
        labels.sort(key=lambda label: (label["label_time"], label["transaction_id"]))
        return labels

    def _deliveries(
        self, rng: random.Random, records: list[dict[str, Any]], labels: list[dict[str, Any]]
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        low, high = self.late_delay_ms
        for record in records:
            at = record["event_time"] + rng.randint(0, self.disorder_ms)
            late = rng.random() < self.late_share
            if late:
                at += rng.randint(low, high)
            deliveries.append(Delivery(TRANSACTIONS, record, at, late))
        deliveries.extend(Delivery(FRAUD_LABELS, label, label["label_time"], False) for label in labels)
        # A stable sort: ties keep transactions (in id order) before labels (in label-time order).
        deliveries.sort(key=lambda d: d.delivery_ms)
        return deliveries

    def _clip(self, t: int) -> int:
        return min(max(t, self.start_ms), self.end_ms - 1)


def _jitter(rng: random.Random, city: _City, degrees: float) -> tuple[float, float]:
    lat = min(90.0, max(-90.0, city.lat + rng.gauss(0.0, degrees)))
    lon = min(180.0, max(-180.0, city.lon + rng.gauss(0.0, degrees)))
    return round(lat, 5), round(lon, 5)


def _amount(rng: random.Random, category: Category) -> float:
    if category.channel == "atm":
        return rng.choices(_ATM_AMOUNTS, _ATM_WEIGHTS)[0]
    return round(max(0.5, rng.lognormvariate(math.log(category.median), category.sigma)), 2)


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for w in weights:
        total += w
        out.append(total)
    return out


class _Pool:
    """Merchant indexes to draw from, busier merchants more likely."""

    def __init__(self, ids: list[int], merchants: list[Merchant]) -> None:
        self.ids = ids
        self.cum = _cumulative([merchants[i].popularity for i in ids])

    def sample(self, rng: random.Random, k: int) -> list[int]:
        """Up to ``k`` distinct indexes (fewer if the pool is small or a few busy merchants dominate)."""
        chosen: list[int] = []
        for _ in range(4 * k):
            if len(chosen) == min(k, len(self.ids)):
                break
            pick = self.ids[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]
            if pick not in chosen:
                chosen.append(pick)
        return chosen
