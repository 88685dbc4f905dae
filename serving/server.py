"""The gRPC server process: ``highwater.v1.FeatureService`` and ``highwater.v1.ScoringService`` with health
checking and reflection.

:func:`build_server` wires a synchronous gRPC server (thread pool) around an online store: the feature
servicer, the scoring servicer (a :class:`streams.scorer.Scorer` on the same store and the model store of
the settings), the standard health service (``grpc.health.v1.Health``, SERVING for ``""`` and for each
service) and server reflection, so ``grpcurl`` or ``grpc_cli`` can call it without the protos.
:func:`serve_forever` is ``highwater serve``: it builds the Redis-backed store from the settings, serves
until SIGTERM or SIGINT, then reports NOT_SERVING to health checkers before draining in-flight calls, so
a load balancer stops routing to it first. Before serving it freezes the start-up heap
(:func:`freeze_startup_heap`), so the garbage collector's full passes do not stall requests.

Example:
    >>> server = build_server(settings.model_copy(update={"grpc_port": 0}), store)  # doctest: +SKIP
    >>> server.start(); print(server.port)                                          # doctest: +SKIP
    43127
    >>> server.graceful_stop()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from highwater.settings import Settings, get_settings
from serving.protos import features_pb2, features_pb2_grpc, scoring_pb2, scoring_pb2_grpc
from serving.scoring_service import SERVICE_NAME as SCORING_SERVICE_NAME
from serving.scoring_service import ScoringServicer
from serving.service import SERVICE_NAME, FeatureServicer
from sinks.online import OnlineStore
from streams.features import REGISTRY, FeatureRegistry
from streams.scorer import Scorer

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 8
DEFAULT_GRACE_S = 5.0


class FeatureServer(grpc.Server):
    """A started-or-startable ``grpc.Server`` that also knows its bound port and its health servicer.

    Every ``grpc.Server`` method is delegated to the wrapped server, so callers use it as any gRPC
    server; :attr:`port` is the port actually bound (useful when the settings asked for port 0).
    ``on_stop`` callbacks (e.g. closing a scorer the server created) run once, when it is stopped.
    """

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        health_servicer: health.HealthServicer,
        on_stop: Sequence[Callable[[], None]] = (),
    ):
        self._server = server
        self.port = port
        self.host = host
        self.health = health_servicer
        self._on_stop = list(on_stop)

    @property
    def target(self) -> str:
        """Where a client on this machine dials the server, e.g. ``127.0.0.1:43127``."""
        host = self.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[Any]) -> None:
        """Delegate to the wrapped server."""
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        """Delegate to the wrapped server."""
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        """Delegate to the wrapped server."""
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """Delegate to the wrapped server."""
        return int(self._server.add_secure_port(address, server_credentials))

    def start(self) -> None:
        """Start serving (non-blocking)."""
        self._server.start()

    def stop(self, grace: float | None) -> threading.Event:
        """Stop the wrapped server; the event is set once it has stopped."""
        event: threading.Event = self._server.stop(grace)
        self._run_on_stop()
        return event

    def _run_on_stop(self) -> None:
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; True on timeout."""
        return bool(self._server.wait_for_termination(timeout))

    def graceful_stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Report NOT_SERVING to health checkers, then stop, letting in-flight calls finish within grace."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()
        self._run_on_stop()


def build_server(
    settings: Settings,
    store: OnlineStore,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    registry: FeatureRegistry = REGISTRY,
    scorer: Scorer | None = None,
) -> FeatureServer:
    """A not-yet-started server bound to ``settings.grpc_host:settings.grpc_port`` (port 0 picks one).

    ``scorer`` serves ScoringService; by default one on ``store`` and the settings' model store
    (``model.store``, polled every ``model.refresh_s``), closed when the server stops. A scorer passed in
    stays the caller's to close.

    Raises RuntimeError naming the address when the port cannot be bound. SO_REUSEPORT is off, so a
    port another process already serves on is an error rather than a silent shared listener.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="highwater-grpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    features_pb2_grpc.add_FeatureServiceServicer_to_server(FeatureServicer(store, registry), server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME, SCORING_SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (
            features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name,
            scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    address = _bind_address(settings.grpc_host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot bind the gRPC server to {address}: {error}") from error
    if port == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address}")
    on_stop: list[Callable[[], None]] = []
    if scorer is None:
        scorer = _default_scorer(settings, store, registry)
        on_stop.append(scorer.close)
    scoring_pb2_grpc.add_ScoringServiceServicer_to_server(ScoringServicer(scorer, registry), server)
    return FeatureServer(server, port, settings.grpc_host, health_servicer, on_stop)


def _default_scorer(settings: Settings, store: OnlineStore, registry: FeatureRegistry) -> Scorer:
    """A scorer on ``store`` following the settings' model store, which it owns (closes)."""
    from sinks.model_store import model_store_from_settings

    models = model_store_from_settings(settings)
    return Scorer(store, models, registry=registry, refresh_s=settings.model.refresh_s, owned=(models,))


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now (modules, protobuf descriptors, the model) out of
    the garbage collector's reach; returns how many objects were frozen.

    A request allocates thousands of short-lived objects (a 100-id read builds about 2,000), so the
    collector's generations fill and every few hundred requests it runs a full pass over the whole heap:
    30-140 ms on the 2-CPU machines of bench/ (measured in-process over 3,000 FeatureService calls:
    8 full passes, 217-247 ms in all, the longest 36 ms; after freezing, 10 passes took 3.1-3.4 ms
    together). That stall lands on whichever request is running. Frozen objects are still freed when
    their last reference goes; only a reference cycle among them would outlive its use, which bounds what
    can linger to the start-up model once a newer version replaces it.

    Example:
        >>> server = build_server(settings, store); freeze_startup_heap()   # doctest: +SKIP
        181532
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve_forever(settings: Settings | None = None) -> None:
    """Serve FeatureService and ScoringService on the Redis online store until SIGTERM or SIGINT
    (``highwater serve``)."""
    from sinks.redis_online import RedisOnlineStore

    settings = settings or get_settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The server reads the live generation (``highwater generations promote`` moves it, atomically).
    store = RedisOnlineStore.from_settings(settings, follow_live=True)
    server = build_server(settings, store)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    frozen = freeze_startup_heap()
    try:
        server.start()
        logger.info(
            "serving %s and %s on %s (online store %s); health and reflection on; %d start-up objects "
            "kept out of garbage collection",
            SERVICE_NAME,
            SCORING_SERVICE_NAME,
            server.target,
            settings.redis_url,
            frozen,
            extra={"rpc.system": "grpc", "rpc.service": SERVICE_NAME},
        )
        stopping.wait()
    finally:
        server.graceful_stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")
