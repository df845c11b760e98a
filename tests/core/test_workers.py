"""WORKERS > 1 is the same service: `python -m app` with one process and with a core process plus two HTTP
workers (real models on the CPU, real Qdrant Edge, real uvicorn) answer one scripted exchange the same (search,
batch search, analyze, index, thumbnails, subjects (list, detail, move a face, rename, merge), feedback and its
erasure with the faces, deletes, /ws frames, an ingest job, 4xx errors, 503s under a burst);
SIGTERM ends every process; a killed worker is replaced and the service answers meanwhile."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import FIVE_FACES, NO_FACE, REPO, Photos, b64, free_port, one_face_frame

START_TIMEOUT = 180.0  # seconds for the models, the store and the workers to come up on a loaded 2-core machine
VOLATILE = {
    "took_ms",
    "processing_ms",
    "warm_up_s",
    "processing_time_ms",
    "processing_time",
    "timestamp",
    "server_time",
    "client_id",
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "elapsed",
    "elapsed_s",
    "eta_s",
    "files_per_s",
    "faces_per_s",
    "rate",
    "eta",
    "throughput",
    "uptime",
    "ingested_at",
    "created",
    "updated",
    "at",
}


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    state: Path

    def log(self) -> str:
        return (self.state / "server.log").read_text(errors="replace")[-6000:]

    def children(self) -> set[int]:
        """The HTTP workers of a core process (multiprocessing's resource tracker is left out)."""
        pids = set()
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.add(int(pid))
        return pids


@contextmanager
def running(tmp: Path, workers: int) -> Iterator[Service]:
    state = tmp / f"workers-{workers}"
    photos = state / "photos"
    photos.mkdir(parents=True)
    for photo in (Photos.yaoming, FIVE_FACES):
        shutil.copy(photo, photos / photo.name)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WORKERS": str(workers),
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "INGEST_ROOTS": str(photos),
        "GPU_ACQUIRE_TIMEOUT": "0.5",  # a burst of uploads is shed at once (503), a lone request never waits
        "LOG_LEVEL": "warning",
    }
    with (state / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(proc, f"http://127.0.0.1:{port}", state)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready(service.url):
            assert proc.poll() is None, f"the service exited:\n{service.log()}"
            assert time.monotonic() < deadline, f"the service did not start:\n{service.log()}"
            time.sleep(0.3)
        yield service
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def stable(value: Any, state: Path) -> Any:
    """An answer without what differs between two runs of the same exchange (times, job ids, the state folder)."""
    if isinstance(value, dict):
        return {k: stable(v, state) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v, state) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, str):
        return value.replace(str(state), "STATE_DIR")
    return value


def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.2)


def exchange(service: Service) -> list[tuple[str, int, Any]]:
    """One scripted session against a running service: (step, status, answer without volatile fields)."""
    out: list[tuple[str, int, Any]] = []
    http = httpx.Client(base_url=service.url, timeout=120)

    def record(step: str, response: httpx.Response) -> Any:
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
        out.append((step, response.status_code, stable(body, service.state)))
        return body

    def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
        return {"file": (path.name, path.read_bytes(), "image/jpeg")}

    indexed = record("index", http.post("/api/faces", files=upload(Photos.t1), data={"subject": "team"}))
    alone = record("index again", http.post("/api/faces", files=upload(Photos.yaoming)))
    record("search", http.post("/api/search", files=upload(Photos.t1), params={"top_k": 2}))
    record("search with heads", http.post("/api/search", files=upload(Photos.yaoming), params={"heads": "emotion"}))
    record(
        "batch search",
        http.post(
            "/api/search/batch",
            files=[
                ("files", ("t1.jpg", Photos.t1.read_bytes(), "image/jpeg")),
                ("files", ("bad.jpg", b"not an image", "image/jpeg")),
                ("files", ("none.jpg", NO_FACE.read_bytes(), "image/jpeg")),
            ],
        ),
    )
    record("analyze", http.post("/api/analyze", files=upload(Photos.t1)))
    record("page search", http.post("/search", files=upload(Photos.yaoming), headers={"Accept": "application/json"}))
    thumb = http.get(f"/thumbs/{indexed['ids'][0]}")
    out.append(("thumbnail", thumb.status_code, (thumb.headers["content-type"], len(thumb.content))))
    record("status", http.get("/status"))
    record("heads", http.get("/api/heads"))
    # Errors: every one from the same table, whichever process raised it.
    record(
        "not an image", http.post("/api/search", files={"file": ("x.txt", b"plain text, not an image", "text/plain")})
    )
    record("no file", http.post("/api/search"))
    record("unknown head", http.post("/api/analyze", files=upload(Photos.yaoming), params={"heads": "nope"}))
    record("bad top_k", http.post("/api/search", files=upload(Photos.yaoming), params={"top_k": 0}))
    record("unknown face", http.delete("/api/faces/00000000-0000-0000-0000-000000000000"))
    record("bad face id", http.get("/thumbs/not-an-id"))
    record("ingest outside the roots", http.post("/api/ingest", json={"path": "/etc"}))
    # People: the core's subjects and feedback, from whichever process took the request.
    record("subjects", http.get("/api/subjects"))
    record("subject", http.get("/api/subjects/team"))
    record("move a face", http.post(f"/api/faces/{alone['ids'][0]}/subject", json={"subject": "yao"}))
    record("rename", http.patch("/api/subjects/yao", json={"name": "Yao"}))
    record("merge", http.post("/api/subjects/team/merge", json={"from": "Yao"}))
    record("unknown subject", http.get("/api/subjects/nobody"))
    overview = http.get("/api/people/overview")  # the people page's counts (its index part is timing-dependent)
    out.append(("overview", overview.status_code, {k: v for k, v in overview.json().items() if k != "index"}))
    record("similar", http.get(f"/api/faces/{alone['ids'][0]}/similar", params={"limit": 3}))
    pair = {"query": indexed["ids"][0], "match_id": indexed["ids"][1], "same_person": False}
    record("feedback", http.post("/api/feedback", json=pair))
    record("feedback listed", http.get("/api/feedback"))
    # Deletes.
    record("delete one", http.delete(f"/api/faces/{indexed['ids'][0]}"))
    record("feedback erased with its face", http.get("/api/feedback"))
    record("deleted thumbnail", http.get(f"/thumbs/{indexed['ids'][0]}"))
    record("delete subject", http.delete("/api/faces", params={"subject": "team"}))
    # An ingest job, run by the core's job manager.
    job = record("ingest", http.post("/api/ingest", json={"path": str(service.state / "photos")}))
    until(lambda: http.get(f"/api/jobs/{job['id']}").json()["status"] in ("completed", "failed"), 120)
    done = http.get(f"/api/jobs/{job['id']}")
    out.append(("ingest done", done.status_code, {k: done.json()[k] for k in ("status", "counts", "path")}))
    record("search after ingest", http.post("/api/search", files=upload(Photos.yaoming)))
    # Clusters of the unknown faces: a job of the core's manager, its clusters read through the core.
    clustering = record("cluster", http.post("/api/clusters"))
    until(lambda: http.get(f"/api/jobs/{clustering['id']}").json()["status"] in ("completed", "failed"), 120)
    clustered = http.get(f"/api/jobs/{clustering['id']}")
    out.append(("cluster job", clustered.status_code, {k: clustered.json()[k] for k in ("status", "kind", "detail")}))
    record("clusters", http.get("/api/clusters"))
    record("unknown cluster", http.get("/api/clusters/c-nope"))
    # min_quality crosses the socket (a worker's search names it to the core).
    record("search min_quality", http.post("/api/search", files=upload(Photos.t1), params={"min_quality": 0.9}))
    # The socket: frames go through the core like uploads.
    with connect(service.url.replace("http://", "ws://") + "/ws") as ws:
        hello = json.loads(ws.recv(timeout=60))
        out.append(("ws connected", 0, stable(hello, service.state)))
        ws.send(json.dumps({"event": "process_frame", "data": {"frame": b64(Photos.t1), "settings": {"search": True}}}))
        out.append(("ws frame", 0, stable(json.loads(ws.recv(timeout=60)), service.state)))
        ws.send(json.dumps({"command": "predict", "image": b64(one_face_frame())}))
        out.append(("ws predict", 0, stable(json.loads(ws.recv(timeout=60)), service.state)))
        ws.send(json.dumps({"event": "process_frame", "data": {"frame": b64(b"junk")}}))
        out.append(("ws bad frame", 0, stable(json.loads(ws.recv(timeout=60)), service.state)))
    # Counters of every process summed (WORKERS > 1: prometheus-client's multiprocess mode).
    text = http.get("/metrics").text
    wanted = ("oceano_search_requests_total", "oceano_faces_indexed_total", "oceano_errors_total")
    out.append(("metrics", 0, sorted(line for line in text.splitlines() if line.startswith(wanted))))
    engine_calls = [line for line in text.splitlines() if line.startswith("oceano_inference_batch_size_count")]
    out.append(("engine metrics", 0, bool(engine_calls) and all(float(line.split()[-1]) > 0 for line in engine_calls)))
    http.close()
    return out


def burst(service: Service, uploads: int = 24) -> list[httpx.Response]:
    """Many uploads at once: more work than GPU_ACQUIRE_TIMEOUT allows is shed with 503 and Retry-After."""
    data = Photos.t1.read_bytes()

    def one(_: int) -> httpx.Response:
        return httpx.post(f"{service.url}/api/search", files={"file": ("t1.jpg", data, "image/jpeg")}, timeout=120)

    with ThreadPoolExecutor(uploads) as pool:
        return list(pool.map(one, range(uploads)))


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[tuple[str, int, Any]]]:
    tmp = tmp_path_factory.mktemp("workers")
    found = {}
    for workers in (1, 2):
        with running(tmp, workers) as service:
            found[workers] = exchange(service)
            shed = burst(service)
            assert {r.status_code for r in shed} <= {200, 503}
            busy = [r for r in shed if r.status_code == 503]
            assert busy and all(r.json()["error"] == "busy" and int(r.headers["Retry-After"]) >= 1 for r in busy)
            assert any(r.status_code == 200 for r in shed)
    return found


def test_one_process_and_a_core_with_two_workers_answer_the_same(answers: dict[int, list[Any]]) -> None:
    single, multi = answers[1], answers[2]
    assert [step for step, *_ in multi] == [step for step, *_ in single]
    for one, two in zip(single, multi, strict=True):
        before, after = (json.dumps(answer, indent=1, sort_keys=True).splitlines() for answer in (one, two))
        assert one == two, f"step {one[0]!r} differs:\n" + "\n".join(difflib.unified_diff(before, after, lineterm=""))


def test_the_exchange_is_what_the_api_promises(answers: dict[int, list[Any]]) -> None:
    steps = {step: (status, body) for step, status, body in answers[2]}
    assert steps["index"][0] == 201 and steps["index"][1]["faces"] == 6
    search = steps["search"][1]
    assert len(search["faces"]) == 6 and all(f["matches"][0]["score"] > 0.99 for f in search["faces"])
    assert "emotion" in steps["search with heads"][1]["faces"][0]
    batch = steps["batch search"][1]["results"]
    assert [len(r["faces"]) for r in batch] == [6, 0, 0] and batch[1]["error"] and batch[2]["error"] is None
    assert steps["thumbnail"] == (200, ("image/jpeg", steps["thumbnail"][1][1]))
    assert {k: steps[k][0] for k in ("not an image", "no file", "unknown head", "bad top_k")} == {
        "not an image": 415,
        "no file": 400,
        "unknown head": 400,
        "bad top_k": 422,
    }
    assert steps["unknown face"][0] == 404 and steps["bad face id"][0] in (404, 422)
    assert steps["ingest outside the roots"][0] == 403
    assert steps["subjects"][0] == 200 and [(s["name"], s["faces"]) for s in steps["subjects"][1]["subjects"]] == [
        ("team", 6)
    ]
    assert {k: steps[k][0] for k in ("subject", "move a face", "rename", "merge", "unknown subject")} == {
        "subject": 200,
        "move a face": 200,
        "rename": 200,
        "merge": 200,
        "unknown subject": 404,
    }
    assert steps["merge"][1]["faces"] == 7
    assert steps["overview"] == (
        200,
        {k: 0 for k in ("unknown_faces", "clusters", "unclustered")}
        | {"faces": 7, "subjects": 1, "last_cluster_job": None},
    )
    assert steps["similar"][0] == 200 and len(steps["similar"][1]["matches"]) == 3
    assert steps["feedback listed"][1]["total"] == 1 and steps["feedback erased with its face"][1]["total"] == 0
    assert steps["deleted thumbnail"][0] == 404 and len(steps["delete subject"][1]["deleted"]) == 6
    assert steps["ingest"][0] == 202 and steps["ingest done"][1]["status"] == "completed"
    assert steps["cluster"][0] == 202 and steps["cluster job"][1]["status"] == "completed"
    assert steps["cluster job"][1]["kind"] == "cluster" and steps["clusters"][0] == 200
    assert steps["clusters"][1]["unclustered"] > 0 and steps["unknown cluster"][0] == 404
    assert steps["ingest done"][1]["counts"]["faces_added"] == 6
    assert steps["ws frame"][1]["event"] == "detection_result" and len(steps["ws frame"][1]["data"]["faces"]) == 6
    assert steps["ws predict"][1]["status"] == "success"
    assert "oceano_faces_indexed_total 7.0" in steps["metrics"][1] and steps["engine metrics"][1] is True
    assert steps["ws bad frame"][1]["data"]["code"] in ("bad_image", "unsupported_media_type")


def test_sigterm_ends_every_process_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with running(tmp_path, 2) as service:
        workers = service.children()
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert ready(service.url)  # the other worker answers meanwhile
        until(lambda: len(service.children()) == 2 and victim not in service.children(), 120)
        until(lambda: ready(service.url), 60)
        response = httpx.post(
            f"{service.url}/api/search", files={"file": ("y.jpg", Photos.yaoming.read_bytes(), "image/jpeg")}
        )
        assert response.status_code == 200 and len(response.json()["faces"]) == 1
        workers = service.children()
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(90) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes()
        assert not (service.state / "core.sock").exists()


def test_workers_stop_when_the_core_process_is_killed(tmp_path: Path) -> None:
    with running(tmp_path, 2) as service:
        workers = service.children()
        assert len(workers) == 2
        service.proc.kill()  # no shutdown at all: the workers find their parent gone
        service.proc.wait(30)

        def ended(pid: int) -> bool:
            try:
                return b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
            except FileNotFoundError:
                return True

        until(lambda: all(ended(pid) for pid in workers), 60)
        assert "the core process" in service.log() and "is gone" in service.log()
