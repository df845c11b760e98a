"""Locust users for Oceano's load report (bench/load_report.py runs them headless at several user counts).

A realistic mix of what a face-search service is asked, over the labelled eval photos (0.1 to 13 MP, one to a
dozen faces each):
  SearchUser   (weight 8)  POST /api/search with a random photo
  AnalyzeUser  (weight 1)  POST /api/analyze?heads=emotion with a random photo
  IndexUser    (weight 1)  POST /api/faces with a JPEG photo given new bytes each time (a JPEG comment carrying a
                           counter: same pixels, new content hash, so new point ids), with the write key
Each user waits OCEANO_WAIT seconds (default 1 to 3) between requests: people at a page or clients with their
own work, not a closed loop.

Answers are sorted three ways: served (2xx); shed (503 with Retry-After: the service refusing work it could not
start within GPU_ACQUIRE_TIMEOUT, by design, reported to Locust as a failure named "shed: ..."); failures (all
else, named by status and error code). With OCEANO_LOAD_SAMPLES set, every answer between the end of spawning
and the stop is also written there as JSON (for the report's percentiles of served answers only).

Environment: OCEANO_LOAD_PHOTOS (folder of photos; default ../shared/eval/faces-a), OCEANO_API_KEY (a key with the
`write` scope, for IndexUser; without it, uploads rely on protected mode), OCEANO_WAIT ("1,3"),
OCEANO_LOAD_SAMPLES (a file to write), OCEANO_LOAD_DURATION (seconds to run once every user has started, then
quit), OCEANO_TIMEOUT (seconds per request, default 60).

    locust -f bench/locustfile.py --host http://127.0.0.1:9100     # or: python -m bench.load_report
"""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import time
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, events, task

REPO = Path(__file__).resolve().parent.parent
PHOTOS_DIR = Path(os.environ.get("OCEANO_LOAD_PHOTOS", REPO.parent / "shared" / "eval" / "faces-a"))
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
SHED = "shed: 503 busy with Retry-After (GPU_ACQUIRE_TIMEOUT)"
TIMEOUT = float(os.environ.get("OCEANO_TIMEOUT", "60"))
WAIT = tuple(float(v) for v in os.environ.get("OCEANO_WAIT", "1,3").split(","))


def load_photos(folder: Path) -> list[tuple[str, bytes]]:
    photos = [(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.suffix.lower() in EXTENSIONS]
    if not photos:
        raise SystemExit(f"no photos in {folder}: set OCEANO_LOAD_PHOTOS to a folder of face photos")
    return photos


PHOTOS = load_photos(PHOTOS_DIR) if PHOTOS_DIR.is_dir() else []
JPEGS = [(name, data) for name, data in PHOTOS if data[:2] == b"\xff\xd8"]
_uploads = itertools.count()
_salt = os.urandom(4).hex()  # this run's uploads differ from every other run's


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment right after its SOI marker: other bytes, the same pixels."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def outcome(response: Any) -> None:
    """Sort a catch_response answer: served, shed by design, or a failure named by status and error code."""
    status = response.status_code
    if 200 <= status < 300:
        response.success()
    elif status == 503 and response.headers.get("Retry-After"):
        response.failure(SHED)
    else:
        try:
            code = response.json().get("error", "")
        except ValueError:
            code = (response.text or "")[:60]
        response.failure(f"HTTP {status} {code}".strip() if status else f"no answer: {response.error}")


class OceanoUser(HttpUser):
    abstract = True
    wait_time = between(*WAIT)

    def on_start(self) -> None:
        if not PHOTOS:
            raise SystemExit(f"the photos are not at {PHOTOS_DIR}: set OCEANO_LOAD_PHOTOS")

    def post_photo(
        self,
        path: str,
        name: str,
        photo: tuple[str, bytes],
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        with self.client.post(
            path, name=name, files={"file": photo}, params=params, headers=headers, timeout=TIMEOUT, catch_response=True
        ) as response:
            outcome(response)


class SearchUser(OceanoUser):
    weight = 8

    @task
    def search(self) -> None:
        self.post_photo("/api/search", "/api/search", random.choice(PHOTOS))


class AnalyzeUser(OceanoUser):
    weight = 1

    @task
    def analyze(self) -> None:
        self.post_photo(
            "/api/analyze", "/api/analyze?heads=emotion", random.choice(PHOTOS), params={"heads": "emotion"}
        )


class IndexUser(OceanoUser):
    weight = 1

    @task
    def index(self) -> None:
        name, jpeg = random.choice(JPEGS or PHOTOS)
        n = next(_uploads)
        if jpeg[:2] == b"\xff\xd8":
            jpeg = with_comment(jpeg, f"oceano-load {_salt} {n}")
        key = os.environ.get("OCEANO_API_KEY")
        self.post_photo(
            "/api/faces", "/api/faces", (f"load-{n}-{name}", jpeg), headers={"X-API-Key": key} if key else None
        )


# ------------------------------------------------------------------------------------------------ samples
# (finished at, route name, ms, "served" | "shed" | "failed", the failure's name or "")
_samples: list[tuple[float, str, float, str, str]] = []
_window: dict[str, float] = {}
_env: dict[str, Any] = {}


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    _env["environment"] = environment


@events.spawning_complete.add_listener
def _spawned(user_count: int, **_: Any) -> None:
    _samples.clear()  # as --reset-stats does: the report covers the run with every user started
    _window["start"] = time.time()
    measure = os.environ.get("OCEANO_LOAD_DURATION")
    runner = getattr(_env.get("environment"), "runner", None)
    if measure and runner is not None:  # stop that long after the last user started (--run-time stays a bound)
        gevent.spawn_later(float(measure), runner.quit)


@events.request.add_listener
def _record(name: str, response_time: float, exception: BaseException | None, **_: Any) -> None:
    if "start" in _window and "stop" not in _window:
        kind = "served" if exception is None else "shed" if str(exception) == SHED else "failed"
        _samples.append((time.time(), name, float(response_time), kind, "" if exception is None else str(exception)))


@events.test_stopping.add_listener
def _stopping(**_: Any) -> None:
    _window.setdefault("stop", time.time())


@events.quitting.add_listener
def _write_samples(**_: Any) -> None:
    target = os.environ.get("OCEANO_LOAD_SAMPLES")
    if target:
        _window.setdefault("stop", time.time())
        Path(target).write_text(json.dumps({"window": _window, "samples": _samples}))
