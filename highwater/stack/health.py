"""Health checks of the local stack's parts: each answers ``(healthy, detail)`` within a timeout.

A check first tries a plain TCP connection, so a part that is not listening is reported at once and
without client libraries logging connection errors; then it asks the part a real question.

Example:
    >>> check_redis(1, timeout=0.2)
    (False, 'nothing listens on 127.0.0.1:1')
"""

from __future__ import annotations

import logging
from typing import Any

from highwater.stack.ports import LOCALHOST, port_open

# The client libraries are imported inside the checks: importing them takes about a second here, and
# ``highwater down`` or the supervisor's own start should not wait for that.

Health = tuple[bool, str]

_quiet = logging.getLogger("highwater.stack.health.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def _closed(port: int, timeout: float) -> Health | None:
    if port_open(port, timeout=min(timeout, 0.5)):
        return None
    return False, f"nothing listens on {LOCALHOST}:{port}"


def check_broker(port: int, timeout: float = 2.0) -> Health:
    """The Kafka API broker answers a metadata request (AdminClient ``list_topics``)."""
    closed = _closed(port, timeout)
    if closed:
        return closed
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {"bootstrap.servers": f"{LOCALHOST}:{port}", "logger": _quiet}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return False, f"metadata request failed: {exc.args[0]}"
    return True, f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s)"


def check_registry(port: int, timeout: float = 2.0) -> Health:
    """The schema registry answers ``GET /subjects`` with 200."""
    import httpx

    closed = _closed(port, timeout)
    if closed:
        return closed
    try:
        response = httpx.get(f"http://{LOCALHOST}:{port}/subjects", timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"GET /subjects failed: {exc!r}"
    if response.status_code != 200:
        return False, f"GET /subjects answered {response.status_code}"
    return True, f"{len(response.json())} subject(s)"


def check_redis(port: int, timeout: float = 2.0) -> Health:
    """Redis answers PING."""
    import redis

    closed = _closed(port, timeout)
    if closed:
        return closed
    client = redis.Redis(host=LOCALHOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        keys = client.dbsize()
    except redis.RedisError as exc:
        return False, f"PING failed: {exc}"
    finally:
        client.close()
    return True, f"{keys} key(s) in db 0"


def check_clickhouse(port: int, timeout: float = 2.0) -> Health:
    """The ClickHouse HTTP interface answers ``GET /ping`` and a query on ``system.databases``."""
    import httpx

    closed = _closed(port, timeout)
    if closed:
        return closed
    url = f"http://{LOCALHOST}:{port}/"
    try:
        ping = httpx.get(f"{url}ping", timeout=timeout)
        if ping.status_code != 200:
            return False, f"GET /ping answered {ping.status_code}"
        response = httpx.get(url, params={"query": "SELECT count() FROM system.databases"}, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"GET /ping or a query failed: {exc!r}"
    if response.status_code != 200:
        return False, f"a query answered {response.status_code}: {response.text.strip()[:200]}"
    return True, f"{int(response.text)} database(s)"
