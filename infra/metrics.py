"""Prometheus metrics: every metric we export (its name, labels and meaning), who may read
them, and each worker process's endpoint. The places that count call the small functions
here, a line or two each, so this module is the one list of what is measured.

Where they are served:

- The API: ``GET /metrics`` (api/metrics.py). Generations started, open event streams,
  and the provider permits in use per model (read from PostgreSQL at each scrape), with
  prometheus_client's own ``process_*`` and ``python_*``.
- Each worker process: one endpoint at ``BITBUDDIES_WORKER_METRICS_ADDRESS`` (host:port;
  off when unset) serving this process's metrics and, after them, the Temporal SDK's own
  (``temporal_*``, as the SDK names them). The SDK's Prometheus exporter listens on a
  loopback port picked at start and is read at each scrape, so one address and one access
  rule cover both: two public ports (prometheus_client's and the SDK's) would need two
  settings per pool, and the SDK's exporter knows no access rule.

Each process counts its own: a counter starts again from 0 when its process does
(Prometheus's ``rate`` and ``increase`` allow for that), and a scrape sees one process.
Each real event is counted at most once, not once per activity attempt: an ending is
counted after its transaction commits, and not by an attempt that finds the generation
already ended (activities/generations.py), so a crash between the commit and the count
loses that count rather than doubling it; a duration is observed only by the attempt
that succeeds. Label values are bounded: step names, error codes and provider app ids,
all ours; never a user or generation id.

Who may read (``access``): with ``BITBUDDIES_METRICS_TOKEN`` set, a caller sending
``Authorization: Bearer <token>``, on the API and on the workers alike (401 otherwise);
without it, nobody in production (404, as for any unknown address) and, locally, callers
on the loopback interface only.

The API imports this module: it stays light (no activity, provider or worker library; the
SDK's runtime is imported only where a worker makes it).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from infra.database import permits
from infra.settings import Settings

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

log = logging.getLogger("bitbuddies.metrics")

# The text format every endpoint answers in (the SDK's part is in it too).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# No `*_created` series beside each counter: nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# --- the metrics ------------------------------------------------------------------

# From a local model's fraction of a second to a hosted video model's minutes.
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

GENERATIONS_STARTED = Counter(
    "bitbuddies_generations_started",
    "Generations charged and their workflow started, by the API request that made them"
    " (a retried request or the sweep starting an abandoned one is not counted).",
)
GENERATIONS_COMPLETED = Counter(
    "bitbuddies_generations_completed",
    "Generations delivered: the character and the outcome recorded (interactive worker).",
)
GENERATIONS_FAILED = Counter(
    "bitbuddies_generations_failed",
    "Generations the workflow settled as failed, by the step they failed at and the error"
    " code the owner was shown (interactive worker).",
    ["step", "reason"],
)
GENERATIONS_CANCELLED = Counter(
    "bitbuddies_generations_cancelled",
    "Generations the workflow settled as cancelled, by the step they were at (interactive worker).",
    ["step"],
)
GENERATIONS_REFUNDED = Counter(
    "bitbuddies_generations_refunded",
    "Tokens given back when the workflow settled a generation, by step and error code"
    " (cancelled for a cancellation; interactive worker).",
    ["step", "reason"],
)
STEP_SECONDS = Histogram(
    "bitbuddies_step_duration_seconds",
    "A model job from its submit to its result fetched and stored (interactive worker), and the"
    " transcode (media worker); by step. Completed jobs only; a resubmitted step counts"
    " the job that finished.",
    ["step"],
    buckets=STEP_BUCKETS,
)
PROVIDER_QUEUE_SECONDS = Histogram(
    "bitbuddies_provider_queue_seconds",
    "A model job from its submit to the first sight of it out of the provider's queue"
    " (running or done), by step (interactive worker). The poll sees the job start; a job awaited"
    " by webhook is first seen at its fetch, so this is then its whole time at the"
    " provider.",
    ["step"],
    buckets=QUEUE_BUCKETS,
)
OPEN_STREAMS = Gauge(
    "bitbuddies_open_streams",
    "Progress event streams open on this API process.",
)
PERMITS_IN_USE = "bitbuddies_model_permits_in_use"  # a collector's, below

_LABEL = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _bounded(value: str) -> str:
    """A label value as given when it looks like one of ours, else ``other``: nothing
    unexpected can make a new series per request."""
    return value if _LABEL.fullmatch(value) else "other"


# --- counting: one call per place ---------------------------------------------------


def generation_started() -> None:
    GENERATIONS_STARTED.inc()


def generation_completed() -> None:
    GENERATIONS_COMPLETED.inc()


def generation_settled(status: str, step: str, reason: str, *, refunded: bool) -> None:
    """A generation settled (billing/settlement.py, by its workflow, the sweep, the
    reconciliation, a start Temporal refused, a cancel or a deletion): failed or
    cancelled, and maybe refunded."""
    step, reason = _bounded(step), _bounded(reason)
    if status == "cancelled":
        GENERATIONS_CANCELLED.labels(step).inc()
    else:
        GENERATIONS_FAILED.labels(step, reason).inc()
    if refunded:
        GENERATIONS_REFUNDED.labels(step, reason).inc()


def step_took(step: str, seconds: float) -> None:
    STEP_SECONDS.labels(_bounded(step)).observe(seconds)


async def _job_age(db: AsyncConnectionPool[Any], job_key: str) -> float | None:
    """Seconds since the job submitted under ``job_key`` was recorded, by the database's
    clock (so no worker's clock matters); None when unknown. Never raises: a metric must
    not fail a step."""
    try:
        async with db.connection() as conn:
            return await permits.job_age_seconds(conn, job_key)
    except Exception:
        log.warning("could not read a job's submit time for its metrics", exc_info=True)
        return None


@dataclass
class QueueWatch:
    """Follows one poll's sightings of a job and observes, once, its time in the
    provider's queue: when it is first seen out of it (running or done).

    A poll retried on another worker starts a new watch. If its first sighting is of a
    job already out of the queue, an earlier attempt saw it leave (and counted) or died
    before it looked, so nothing is counted; the first attempt counts it, as an upper
    bound of the wait from the submit."""

    db: AsyncConnectionPool[Any]
    step: str
    job_key: str
    first_attempt: bool
    _queued: bool = False
    _looked: bool = False
    _done: bool = False

    async def seen(self, *, queued: bool) -> None:
        if self._done:
            return
        first_look, self._looked = not self._looked, True
        if queued:
            self._queued = True
            return
        self._done = True
        if self._queued or (first_look and self.first_attempt):
            waited = await _job_age(self.db, self.job_key)
            if waited is not None:
                PROVIDER_QUEUE_SECONDS.labels(_bounded(self.step)).observe(waited)


@dataclass
class FetchTiming:
    """A fetch's clock: the job's age when its result was first read, plus the time
    since."""

    step: str
    age: float | None
    began: float = field(default_factory=time.monotonic)

    def fetched(self) -> None:
        """The result is fetched and stored: observe the job's submit-to-fetched time.
        Called last in a fetch that succeeds, so a failed attempt observes nothing."""
        if self.age is not None:
            step_took(self.step, self.age + time.monotonic() - self.began)


async def fetching(
    db: AsyncConnectionPool[Any], step: str, job_key: str, webhook: bool, first_attempt: bool
) -> FetchTiming:
    """A fetch has the job's result in hand. A job awaited by webhook was never polled, so
    this is the first sight of it out of the queue: its queue time is observed here, by
    the fetch's first attempt only."""
    age = await _job_age(db, job_key)
    if webhook and first_attempt and age is not None:
        PROVIDER_QUEUE_SECONDS.labels(_bounded(step)).observe(age)
    return FetchTiming(step, age)


# --- permits in use: read at each scrape ---------------------------------------------


class PermitsInUse(Collector):
    """``bitbuddies_model_permits_in_use{model}``: provider permits held per model (the
    leases that count against BITBUDDIES_MODEL_CONCURRENCY, across every worker), read
    from PostgreSQL at each scrape. Served by the API, whose lifespan calls ``read_from``;
    a process that never does exports nothing of it. A model seen once stays listed (at
    0 when none is held), so its series does not vanish between jobs.

    ``collect`` runs in the scrape's thread, never on the event loop it reads through
    (it would wait for itself): the API renders in a thread (``exposition_in_thread``)."""

    READ_TIMEOUT_SECONDS = 2.0

    def __init__(self) -> None:
        self._source: tuple[AsyncConnectionPool[Any], asyncio.AbstractEventLoop] | None = None
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def read_from(
        self, pool: AsyncConnectionPool[Any] | None, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self._source = (pool, loop) if pool is not None and loop is not None else None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self._read()
        if counts is None:
            return []
        family = self._family()
        with self._lock:
            self._seen.update(counts)
            for model in sorted(self._seen):
                family.add_metric([model], counts.get(model, 0))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PERMITS_IN_USE,
            "Provider permits held per model (jobs in flight or about to be submitted),"
            " across every worker; read from PostgreSQL at each scrape.",
            labels=["model"],
        )

    def _read(self) -> dict[str, int] | None:
        source = self._source
        if source is None:
            return None
        pool, loop = source
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop or loop.is_closed():
            return None

        async def query() -> dict[str, int]:
            async with pool.connection() as conn:
                return await permits.in_use_by_model(conn)

        future = asyncio.run_coroutine_threadsafe(query(), loop)
        try:
            counts = future.result(self.READ_TIMEOUT_SECONDS)
        except Exception:
            future.cancel()
            log.warning("could not read the permits in use for the metrics", exc_info=True)
            return None
        return {_bounded(model): n for model, n in counts.items()}


PERMITS = PermitsInUse()
REGISTRY.register(PERMITS)


def exposition() -> bytes:
    """This process's metrics, in the text format."""
    return generate_latest(REGISTRY)


async def exposition_in_thread() -> bytes:
    """As ``exposition``, rendered off the event loop (collectors may read through it)."""
    return await asyncio.to_thread(exposition)


# --- who may read -------------------------------------------------------------------

Access = Literal["allowed", "unauthorized", "hidden"]


def access(settings: Settings, authorization: str | None, client_host: str | None) -> Access:
    """Whether a caller may read metrics: ``allowed``; ``unauthorized`` (answer 401) when a
    token is set and the caller did not send it; ``hidden`` (answer 404) without a token,
    in production for everyone and locally for anyone not on the loopback interface."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        sent = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
        return "allowed" if sent else "unauthorized"
    if settings.environment == "production":
        return "hidden"
    return "allowed" if _loopback(client_host) else "hidden"


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --- a worker process's endpoint ----------------------------------------------------

SDK_READ_TIMEOUT_SECONDS = 2.0
_SDK_BIND_TRIES = 5


class WorkerEndpoint:
    """One worker process's metrics endpoint: ``GET /metrics`` at the settings' address,
    answering this process's metrics followed by the Temporal SDK's, under ``access``.

    ``temporal`` is the SDK runtime the worker's client must connect with
    (``infra.temporal.connect``): its Prometheus exporter is the one read at each scrape.
    The server runs in threads of its own, so a scrape never waits on the event loop."""

    def __init__(self, settings: Settings, host: str, port: int, *, sdk: bool = True) -> None:
        self.temporal: Runtime | None = None
        sdk_url: str | None = None
        if sdk:
            self.temporal, sdk_port = _sdk_runtime()
            sdk_url = f"http://127.0.0.1:{sdk_port}/metrics"
        server = _ServerV6 if ":" in host else ThreadingHTTPServer
        self._server = server((host, port), _handler(settings, sdk_url))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()

    @classmethod
    def open(cls, settings: Settings) -> WorkerEndpoint | None:
        """The endpoint the settings ask for; None when BITBUDDIES_WORKER_METRICS_ADDRESS
        is unset."""
        if not settings.worker_metrics_address:
            return None
        host, port = split_address(settings.worker_metrics_address)
        endpoint = cls(settings, host, port)
        if settings.environment == "production" and not settings.metrics_token:
            log.warning("no BITBUDDIES_METRICS_TOKEN: in production the worker metrics are 404")
        log.info("worker metrics at http://%s:%d/metrics", host, endpoint.port)
        return endpoint

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a pair."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _sdk_runtime() -> tuple[Runtime, int]:
    """A Temporal SDK runtime whose Prometheus exporter listens on a free loopback port
    (the SDK's default names: ``temporal_request``, ``temporal_workflow_completed``, ...)."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    for _ in range(_SDK_BIND_TRIES):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            config = PrometheusConfig(bind_address=f"127.0.0.1:{port}")
            return Runtime(telemetry=TelemetryConfig(metrics=config)), port
        except ValueError:  # taken between the probe and the exporter's bind: another
            continue
    raise RuntimeError("no free loopback port for the Temporal SDK's metrics")


def _sdk_text(url: str | None) -> bytes:
    if url is None:
        return b""
    try:  # our own loopback http:// URL
        with urllib.request.urlopen(url, timeout=SDK_READ_TIMEOUT_SECONDS) as answer:  # noqa: S310
            text: bytes = answer.read()
    except OSError:
        log.warning("could not read the Temporal SDK's metrics", exc_info=True)
        return b""
    return text


def _handler(settings: Settings, sdk_url: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/metrics":
                self._answer(404, b"not found\n")
                return
            verdict = access(settings, self.headers.get("Authorization"), self.client_address[0])
            if verdict == "unauthorized":
                self._answer(401, b"unauthorized\n", {"WWW-Authenticate": "Bearer"})
            elif verdict == "hidden":
                self._answer(404, b"not found\n")
            else:
                self._answer(200, exposition() + _sdk_text(sdk_url), content_type=CONTENT_TYPE)

        def _answer(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str] | None = None,
            content_type: str = "text/plain; charset=utf-8",
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    return Handler
