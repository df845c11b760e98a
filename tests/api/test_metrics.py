"""GET /metrics, parsed as Prometheus parses it: histograms by route template, engine batches, waits, shed and
dropped requests, scrape-time gauges, process metrics; one registry per app."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.access.keys import KEYS_FILE, KeyStore
from app.api import create_app
from app.api.metrics import Metrics
from app.ingest.model import FileStatus, JobStatus
from tests.support import face_folder, gate_held, make_settings


def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "application/octet-stream")}


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_search_moves_the_request_and_engine_histograms(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    before = scrape(client)
    assert client.post("/api/search", files=upload(photos.t1)).status_code == 200
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("oceano_http_request_duration_seconds_count", method="POST", route="/api/search", status="200") == 1
    assert (
        moved(
            "oceano_http_request_duration_seconds_bucket", method="POST", route="/api/search", status="200", le="+Inf"
        )
        == 1
    )
    # One engine call: the detector ran on 1 image, the recognizer on its 6 faces.
    assert moved("oceano_inference_batch_size_count", model="detector", source="requests") == 1
    assert moved("oceano_inference_batch_size_sum", model="detector", source="requests") == 1
    assert moved("oceano_inference_batch_size_sum", model="recognizer", source="requests") == 6
    assert moved("oceano_inference_batch_duration_seconds_count", model="recognizer", source="requests") == 1
    assert moved("oceano_inference_wait_seconds_count", source="requests") == 1
    assert moved("oceano_search_requests_total") == 1 and moved("oceano_search_faces_total") == 6
    assert moved("oceano_http_requests_by_key_total", key="anonymous", status="200") >= 1
    # The scrape-time gauges and the process.
    assert sample(after, "oceano_collection_vectors") == 0 and sample(after, "oceano_store_up") == 1
    assert sample(after, "oceano_inference_slots") == 1
    assert sample(after, "oceano_info", version="0.1.0", model="bundled", backend="edge") == 1
    for status in JobStatus:
        assert ("oceano_ingest_jobs", frozenset({("status", status.value)})) in after
    for status in FileStatus:
        assert ("oceano_ingest_files", frozenset({("status", status.value)})) in after
    assert sample(after, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in after)


def test_routes_are_labelled_by_template_never_by_raw_path(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    face_id = client.post("/api/faces", files=upload(photos.yaoming)).json()["ids"][0]
    assert client.delete(f"/api/faces/{face_id}").status_code == 200
    assert client.get("/no/such/path/42").status_code == 404
    samples = scrape(client)
    routes = {dict(labels).get("route") for name, labels in samples if name.startswith("oceano_http_request")}
    assert {"/api/faces", "/api/faces/{face_id}", "unmatched"} <= routes
    assert not any(face_id in str(r) or "42" in str(r) for r in routes)
    assert sample(samples, "oceano_faces_indexed_total") == 1
    assert sample(samples, "oceano_collection_vectors") == 0  # indexed, then deleted
    assert sample(samples, "oceano_errors_total", error="not_found") == 0  # the 404 above is the router's


def test_admission_refusal_counts_as_shed_and_a_deadline_as_dropped(
    client_factory: Callable[..., TestClient],  # type: ignore[no-untyped-def]
    photos,
) -> None:
    client = client_factory(gpu_acquire_timeout=0.2)
    batcher = client.app.state.services.batcher  # type: ignore[attr-defined]
    before = scrape(client)
    batcher.seconds_per_image = 10.0  # measured engine time: one image ahead is 10 s of work
    with batcher.admit(1):  # that image
        r = client.post("/api/search", files=upload(photos.yaoming))
    assert r.status_code == 503 and r.json()["error"] == "busy" and int(r.headers["Retry-After"]) >= 10
    batcher.seconds_per_image = 0.01
    with gate_held(batcher.engine.gate):  # admitted, then waits past GPU_ACQUIRE_TIMEOUT in the queue
        assert client.post("/api/search", files=upload(photos.yaoming)).status_code == 503
    after = scrape(client)
    assert (
        sample(after, "oceano_requests_shed_total", stage="door")
        - sample(before, "oceano_requests_shed_total", stage="door")
        == 1
    )
    assert sample(after, "oceano_requests_dropped_total", reason="deadline") == 1
    assert sample(after, "oceano_requests_shed_total", stage="admit") == 0
    assert (
        sample(after, "oceano_http_request_duration_seconds_count", method="POST", route="/api/search", status="503")
        == 2
    )
    assert sample(after, "oceano_errors_total", error="busy") == 1  # the door's 503 is no domain error


def test_ingest_jobs_feed_the_engine_and_status_gauges(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    face_folder(tmp_path / "photos", 3)
    client = client_factory(ingest_roots=str(tmp_path / "photos"))
    job = client.post("/api/ingest", json={"path": str(tmp_path / "photos")}).json()
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    samples = scrape(client)
    assert sample(samples, "oceano_inference_batch_size_sum", model="detector", source="ingest") == 3
    assert sample(samples, "oceano_inference_wait_seconds_count", source="ingest") >= 1
    assert sample(samples, "oceano_inference_batch_size_count", model="detector", source="requests") == 0
    assert sample(samples, "oceano_ingest_jobs", status="completed") == 1
    assert sample(samples, "oceano_ingest_jobs", status="pending") == 0
    assert sample(samples, "oceano_ingest_files", status="done") == 3
    assert sample(samples, "oceano_collection_vectors") == 3


def test_requests_are_counted_per_api_key_name(tmp_path: Path, client_factory: Any) -> None:
    """The auth layer names a valid key in request.state.key; without one the request is anonymous."""
    settings_dir = tmp_path
    store = KeyStore(settings_dir / KEYS_FILE)
    _, alice = store.create("alice", ["search"])
    store.close()
    client = client_factory()
    client.get("/status", headers={"X-API-Key": alice})
    client.get("/status", headers={"X-API-Key": alice})
    client.get("/status")
    samples = scrape(client)
    assert sample(samples, "oceano_http_requests_by_key_total", key="alice", status="200") == 2
    assert sample(samples, "oceano_http_requests_by_key_total", key="anonymous", status="200") >= 1
    assert (
        sample(samples, "oceano_http_request_duration_seconds_count", method="GET", route="/status", status="200") == 3
    )


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first, second = create_app(make_settings(tmp_path)), create_app(make_settings(tmp_path))
    assert first.state.metrics.registry is not second.state.metrics.registry
    one, other = Metrics(), Metrics()
    one.searches.inc()
    assert one.registry.get_sample_value("oceano_search_requests_total") == 1
    assert other.registry.get_sample_value("oceano_search_requests_total") == 0


def test_metrics_follow_auth_reads(tmp_path: Path, client_factory: Any) -> None:
    """Under AUTH_READS=key /metrics is a read like /status (key names, collection size): a search or admin key,
    else 401 (403 for a key without the scope). Open reads leave it open (the other tests here scrape it so)."""
    store = KeyStore(tmp_path / KEYS_FILE)
    _, reader = store.create("prometheus", ["search"])
    _, admin = store.create("root", ["admin"])
    _, writer = store.create("writer", ["write"])
    store.close()
    closed = client_factory(auth_reads="key")
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"X-API-Key": writer}).status_code == 403
    for key in (reader, admin):
        r = closed.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and "oceano_http_requests_by_key_total" in r.text
    assert closed.get("/status").status_code == 401  # the same rule as /status
