"""The service's Prometheus metrics (prometheus-client), behind GET /metrics.

One registry per app, never the library's global one, so that tests can build several apps in one process. It is
filled by the request middleware (RequestMetrics: duration per route template and status, requests per API key),
the engine (Metrics is the EngineObserver the lifespan installs: model batches, waits, shed and dropped requests),
the handlers (searches, faces indexed, errors) and, at scrape time, from the services themselves (collection
size, inference slots, ingest jobs and files) and the process (ProcessCollector, PlatformCollector).
The metrics are listed in the README's table."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api.routing import RouteTable, route_path
from app.api.server import Refusal
from app.engine import CallSource, Dropped, Shed
from app.ingest.model import FileStatus, JobStatus

if TYPE_CHECKING:
    from app.ingest.manager import IngestJobs
    from app.realtime.stats import RealtimeStats
    from app.service import FaceServiceApi

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_TYPE = CONTENT_TYPE_LATEST  # text/plain, the Prometheus text format
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
ANONYMOUS = "anonymous"  # the `key` label of requests made without an API key
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "other"


class Metrics:
    """The metrics of one app. Also its EngineObserver: called from inference threads (prometheus-client's
    metrics are thread-safe)."""

    def __init__(self) -> None:
        # No `_created` series (one more per labelled child, of use to no dashboard); a process-wide switch.
        disable_created_metrics()
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        # Set by the lifespan; the scrape-time gauges read them.
        self.service: FaceServiceApi | None = None
        self.jobs: IngestJobs | None = None
        self.backend = ""  # the store's backend (edge, server)
        self.realtime: RealtimeStats | None = None  # /ws counters (app.realtime.stats), set by create_app
        self.http_seconds = Histogram(
            "oceano_http_request_duration_seconds",
            "HTTP requests by method, route template and status: seconds from the request to the end of the answer",
            ["method", "route", "status"],
            buckets=SECONDS,
            registry=registry,
        )
        self.key_requests = Counter(
            "oceano_http_requests_by_key",
            "HTTP requests by API key name (anonymous without one) and status",
            ["key", "status"],
            registry=registry,
        )
        self.searches = Counter(
            "oceano_search_requests", "Searches answered (POST /api/search and /search)", registry=registry
        )
        self.search_faces = Counter("oceano_search_faces", "Faces found in searched photos", registry=registry)
        self.search_seconds = Histogram(
            "oceano_search_seconds", "Seconds per answered search, upload to answer", buckets=SECONDS, registry=registry
        )
        self.faces_indexed = Counter(
            "oceano_faces_indexed", "Faces indexed by uploads (POST /api/faces)", registry=registry
        )
        self.errors = Counter(
            "oceano_errors",
            "Requests answered with a domain error, by its code (e.g. busy, bad_image, not_found)",
            ["error"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "oceano_inference_batch_size",
            "Items per model run: images for the detector, faces for the recognizer "
            "and each head; by model and by who asked (requests, ingest)",
            ["model", "source"],
            buckets=BATCH_SIZES,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "oceano_inference_batch_duration_seconds",
            "Seconds per model run, by model and source",
            ["model", "source"],
            buckets=ENGINE_SECONDS,
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "oceano_inference_wait_seconds",
            "Seconds a caller waited for its engine call to start: queue and "
            "inference slot (requests), inference slot (ingest)",
            ["source"],
            buckets=SECONDS,
            registry=registry,
        )
        self.shed_requests = Counter(
            "oceano_requests_shed",
            "Uploads refused with 503 because the engine had more work ahead than "
            "GPU_ACQUIRE_TIMEOUT: at the door (body unread) or at admission (before decoding)",
            ["stage"],
            registry=registry,
        )
        self.dropped_requests = Counter(
            "oceano_requests_dropped",
            "Queued requests dropped before inference: waited past their deadline, or their client left",
            ["reason"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "oceano_http_connections_refused",
            "Connections closed before a request was served: no whole request head within HEADER_TIMEOUT "
            "(header_timeout), or over MAX_CLIENT_CONNECTIONS from one address (client_limit); python -m app only",
            ["reason"],
            registry=registry,
        )
        for refusal in Refusal:
            self.connections_refused.labels(refusal.value)
        for stage in Shed:  # every label at 0 from the start: rate() sees the first one
            self.shed_requests.labels(stage.value)
        for reason in Dropped:
            self.dropped_requests.labels(reason.value)
        registry.register(ServiceGauges(self))

    def connection_refused(self, reason: Refusal) -> None:
        self.connections_refused.labels(reason.value).inc()

    # ------------------------------------------------------------------ EngineObserver
    def model_batch(self, model: str, source: CallSource, size: int, seconds: float) -> None:
        self.batch_size.labels(model, source.value).observe(size)
        self.batch_seconds.labels(model, source.value).observe(seconds)

    def waited(self, source: CallSource, seconds: float) -> None:
        self.wait_seconds.labels(source.value).observe(seconds)

    def shed(self, where: Shed) -> None:
        self.shed_requests.labels(where.value).inc()

    def dropped(self, reason: Dropped) -> None:
        self.dropped_requests.labels(reason.value).inc()

    # ------------------------------------------------------------------ handlers
    def observe_search(self, faces: int, seconds: float) -> None:
        self.searches.inc()
        self.search_faces.inc(faces)
        self.search_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text of every metric (blocking: collects the scrape-time gauges). With WORKERS > 1 the
        counters and histograms are those of every process (core and HTTP workers) summed; the WebSocket
        gauges are this worker's."""
        folder = os.environ.get(MULTIPROCESS_ENV)
        if not folder:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        registry.register(ServiceGauges(self))
        return generate_latest(registry)


def share_across_processes(folder: Path) -> None:
    """WORKERS > 1: every process's counters and histograms are kept in files under `folder` (prometheus-client's
    multiprocess mode) and summed at each scrape. Called in the core before any metric is made; the HTTP workers
    it starts inherit the setting through their environment."""
    os.environ[MULTIPROCESS_ENV] = str(folder)
    values.ValueClass = values.MultiProcessValue()


def _safely(what: str, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # a scrape must answer even when a part of the service is down
        logger.warning("metrics: cannot read %s: %s", what, exc)
        return None


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class ServiceGauges(Collector):
    """Gauges read from the services at scrape time (in the scrape's thread, off the event loop)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._realtime()
        service = self.metrics.service
        if service is None:
            return
        info = GaugeMetricFamily(
            "oceano_info",
            "The running service: version, model pack, store backend",
            labels=["version", "model", "backend"],
        )
        info.add_metric([__version__, service.model_name, self.metrics.backend], 1)
        yield info
        engine = service.engine_status()
        yield _gauge("oceano_inference_slots", "Inference slots (GPU_CONCURRENCY)", engine.concurrency)
        yield _gauge("oceano_inference_in_use", "Inference slots running a model now", engine.in_use)
        yield _gauge("oceano_inference_waiting", "Callers waiting for an inference slot now", engine.waiting)
        if engine.estimated_wait is not None:
            yield _gauge(
                "oceano_inference_estimated_wait_seconds",
                "Seconds a request arriving now would wait for the engine (it is shed over GPU_ACQUIRE_TIMEOUT)",
                engine.estimated_wait,
            )
        count = _safely("the collection size", service.face_count)
        yield _gauge("oceano_store_up", "1 when the vector store answered this scrape, else 0", count is not None)
        if count is not None:
            yield _gauge("oceano_collection_vectors", "Faces (vectors) in the collection", count)
        jobs = self.metrics.jobs
        if jobs is not None:
            yield from _by_status(
                "oceano_ingest_jobs",
                "Ingest jobs of this collection by status",
                JobStatus,
                _safely("ingest jobs", jobs.job_counts),
            )
            yield from _by_status(
                "oceano_ingest_files",
                "Files recorded by ingest for this collection by status",
                FileStatus,
                _safely("ingest files", jobs.file_counts),
            )

    def _realtime(self) -> Iterator[Metric]:
        """The series of GET /api/stats (the WebSocket's frames and connections)."""
        stats = self.metrics.realtime
        if stats is None:
            return
        yield _gauge("oceano_ws_connections_open", "WebSockets open now", stats.active_connections)
        for name, documentation, value in (
            ("oceano_ws_connections_accepted", "WebSockets accepted since start", stats.total_connections),
            (
                "oceano_ws_connections_rejected",
                "WebSockets turned away at MAX_CONCURRENT_CONNECTIONS",
                stats.rejected_connections,
            ),
            (
                "oceano_ws_frames_processed",
                "Frames and predictions answered with a result",
                stats.total_frames_processed,
            ),
            (
                "oceano_ws_frames_dropped",
                "Frames replaced by a newer one of the same socket before processing",
                stats.total_frames_dropped,
            ),
            ("oceano_ws_frames_failed", "Frames answered with an error", stats.total_frames_failed),
            ("oceano_ws_alerts", "Alerts sent (after the cool-down)", stats.total_alerts),
            (
                "oceano_ws_processing_seconds",
                "Processing time of the answered frames, summed",
                stats.processing_seconds,
            ),
        ):
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], value)
            yield counter
        yield _gauge(
            "oceano_ws_processing_p95_seconds",
            "95th percentile of the latest frames' processing time",
            stats.p95_processing_time / 1e3,
        )


def _by_status(
    name: str, documentation: str, statuses: type[JobStatus] | type[FileStatus], counts: dict[str, int] | None
) -> Iterator[Metric]:
    if counts is None:
        return
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status in statuses:  # every status, at 0 too: series never vanish
        family.add_metric([status.value], counts.get(status.value, 0))
    yield family


class RequestMetrics:
    """Times every HTTP request (outermost middleware: refusals at the door and 413s count too), labelled by
    route template, never the raw path, so the label set stays bounded. The API key's name comes from
    `request.state.key` (set by the auth layer, app/api/auth.py, for a valid key only)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # request.state writes here
        status = 500  # unless an answer starts

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = RouteTable.of(scope["app"]).template(route_path(scope))
            code = str(status)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.http_seconds.labels(method, route, code).observe(time.perf_counter() - started)
            key = state.get("key") if isinstance(state, dict) else getattr(state, "key", None)
            self.metrics.key_requests.labels(str(key or ANONYMOUS), code).inc()
