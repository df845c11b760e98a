"""Soak: minutes of mixed traffic at 50 clients against a live service, then an integrity check.

Starts `python -m app` (default settings; `--env KEY=VALUE` to change one) on a free port with its state in a
temporary folder. Then `--clients` threads, each with its own connection, pick actions at random (weights below)
until `--minutes` have passed:
  search          POST /api/search with an eval photo at 640 px
  index           POST /api/faces with a new variant of an eval photo (cropped, mirrored, brightened,
                  re-encoded, and a JPEG comment naming it: distinct bytes each), with a subject and a source
  delete_id       DELETE /api/faces/{id} of a face this run indexed
  delete_file     DELETE /api/faces?file= of a source this run indexed
  delete_subject  DELETE /api/faces?subject= of a subject this run indexed (each subject: up to 3 uploads)
  hostile         one of: a 40000x40000 PNG bomb; a batch of flat 49 MP PNGs (32, over the request budget, and 4,
                  under it, in turn); a truncated JPEG; a non-image; a chunked upload over MAX_UPLOAD_MB
  disconnect      a raw socket to /api/search or /api/faces, closed after half the body, or right after the
                  whole request
A ledger keeps what was indexed and deleted (ids from the answers). An upload or delete whose outcome is not known
(no answer: a disconnect, a timeout, a transport error) is kept apart, never deleted later, and resolved after
the traffic by asking for the thumbnails of its ids (the ids follow from the bytes: uuid5(sha256, face index)).

After the traffic stops and the service is idle, the integrity checks:
  live faces served      GET /thumbs/{id} is 200 for every face indexed and not deleted
  found by own photo     a search with its own photo (top_k 100) finds every live face of a sample of 50 uploads
  erased not served      GET /thumbs/{id} is 404 for every deleted id, and no search of the check returns one
  delete answers         every delete answered 200 and named exactly the faces the ledger expected
  files = ledger         thumbnail files under THUMBS_DIR are exactly the live ids
  vectors = ledger       GET /status vectors equals the ledger's live count
  nothing pending        no file left under THUMBS_DIR/.pending
  healthy                GET /health is 200
  serves a search        a search is answered 200 (GET /health does not ask the engine)
Printed: answers per kind (status counts, p50/p95 latency), the checks (PASS/FAIL), the server's memory (warm RSS,
RSS over the run, peak VmHWM) and the errors in its log. Exit status 1 when an integrity check fails.

    python -m bench.soak [--minutes 5] [--clients 50] [--seed 1]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np

from app.store import point_id
from bench.common import EVAL_DIR, Photos
from bench.hostile import zero_png
from bench.live import REPO, Server, live_server, multipart, reset_peak
from bench.photos import eval_photos

logger = logging.getLogger("bench.soak")
MB = 2**20

WEIGHTS = {
    "search": 40,
    "index": 25,
    "delete_id": 6,
    "delete_file": 5,
    "delete_subject": 4,
    "hostile": 8,
    "disconnect": 12,
}
HOSTILE = ("bomb", "flat_batch", "truncated", "not_image", "chunked")
UPLOADS_PER_SUBJECT = 3
SAMPLE = 50
GONE_KEYS = 10_000_000  # variant keys of the uploads whose client disconnects
# The answers each kind may get; anything else is counted as unexpected.
EXPECTED: dict[str, set[str]] = {
    "search": {"200", "503"},
    "index": {"201", "503"},
    "delete_id": {"200"},
    "delete_file": {"200"},
    "delete_subject": {"200"},
    "bomb": {"413", "503"},
    "flat_batch_32": {"413", "503"},
    "flat_batch_4": {"200", "503"},
    "truncated": {"400", "503"},
    "not_image": {"415", "503"},
    # Cut off at the limit: the 413 may arrive, or the connection may be closed while the client still sends.
    "chunked": {"413", "503", "WriteError", "RemoteProtocolError", "ReadError"},
    "disconnect_half": {"closed"},
    "disconnect_sent": {"closed"},
}


# ------------------------------------------------------------------------------------------------ photos
def shrink(image: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    return cv2.resize(
        image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
    )


def encode_jpeg(image: np.ndarray, quality: int, comment: bytes = b"") -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SystemExit("cannot encode a JPEG")
    data = buf.tobytes()
    if comment:  # a COM segment right after SOI: other bytes, same pixels
        data = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
    return data


class Variants:
    """Distinct photos on demand: variant `key` of eval photo `key % n`, the same bytes every time for a key."""

    def __init__(self, run: str, side: int = 800) -> None:
        paths = eval_photos(EVAL_DIR) if EVAL_DIR.is_dir() else [Photos.t1, Photos.players, Photos.yaoming]
        self.run = run
        self.names: list[str] = []
        self.images: list[np.ndarray] = []
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                self.names.append(path.name)
                self.images.append(shrink(image, side))
        self.queries = [encode_jpeg(shrink(image, 640), 90) for image in self.images]

    def make(self, key: int) -> tuple[int, bytes]:
        photo = key % len(self.images)
        rng = np.random.default_rng(key)
        image = self.images[photo]
        h, w = image.shape[:2]
        top, bottom = (int(v) for v in rng.integers(0, max(2, h // 40), 2))
        left, right = (int(v) for v in rng.integers(0, max(2, w // 40), 2))
        image = image[top : h - bottom, left : w - right]
        if key % 2:
            image = image[:, ::-1]
        image = np.clip(image.astype(np.int16) + int(rng.integers(-12, 13)), 0, 255).astype(np.uint8)
        comment = f"oceano soak {self.run} variant {key}".encode()
        return photo, encode_jpeg(np.ascontiguousarray(image), int(rng.integers(80, 96)), comment)


def chunked_body(size: int, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff\xd8\xff\xe0"
    piece = bytes(MB)
    for sent in range(0, size, MB):
        yield piece[: min(MB, size - sent)]
    yield f"\r\n--{boundary}--\r\n".encode()


# ------------------------------------------------------------------------------------------------ ledger
@dataclass
class Upload:
    key: int
    photo: int
    source: str
    subject: str
    sha: str
    state: str = "pending"  # pending | stored | refused | uncertain
    ids: list[str] = field(default_factory=list)  # from the answer
    live: set[str] = field(default_factory=set)  # ids not deleted
    busy: bool = False  # a delete of its faces is in flight
    group: int | None = None  # subject group (None: a disconnected upload, its own subject)


class Ledger:
    """What this run indexed and deleted, as the service's answers say. One lock; deletes pick only faces whose
    upload is answered and not busy, so that the expected result of every delete is known exactly."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.lock = threading.Lock()
        self.uploads: dict[int, Upload] = {}
        self.groups: dict[int, list[int]] = defaultdict(list)
        self.deleted: set[str] = set()
        self.anomalies: list[str] = []
        self._keys = itertools.count()
        self._gone_keys = itertools.count()
        self._gone = itertools.count()

    def new_key(self, *, gone: bool = False) -> int:
        """A new variant key; disconnected uploads draw theirs from another range, so that every subject group
        of ordinary uploads fills up."""
        with self.lock:
            return GONE_KEYS + next(self._gone_keys) if gone else next(self._keys)

    def add(self, key: int, photo: int, data: bytes, *, gone: bool = False) -> Upload:
        with self.lock:
            if gone:
                n = next(self._gone)
                upload = Upload(
                    key,
                    photo,
                    f"soak/{self.run}/gone-{n}.jpg",
                    f"soak-{self.run}-gone-{n}",
                    hashlib.sha256(data).hexdigest(),
                    state="uncertain",
                )
            else:
                group = key // UPLOADS_PER_SUBJECT
                upload = Upload(
                    key,
                    photo,
                    f"soak/{self.run}/{key}.jpg",
                    f"soak-{self.run}-s{group}",
                    hashlib.sha256(data).hexdigest(),
                    group=group,
                )
                self.groups[group].append(key)
            self.uploads[key] = upload
            return upload

    def answered(self, upload: Upload, state: str, ids: list[str] | None = None) -> None:
        with self.lock:
            upload.state = state
            if ids is not None:
                upload.ids = list(ids)
                upload.live = set(ids)

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(text)
        logger.warning("anomaly: %s", text)

    # Picking deletes: the uploads picked are marked busy until the answer is booked (deleted_ok, uncertain).
    def pick_id(self, rng: random.Random) -> tuple[Upload, str] | None:
        with self.lock:
            ready = [u for u in self.uploads.values() if u.state == "stored" and u.live and not u.busy]
            if not ready:
                return None
            upload = rng.choice(ready)
            upload.busy = True
            return upload, rng.choice(sorted(upload.live))

    def pick_file(self, rng: random.Random) -> Upload | None:
        with self.lock:
            ready = [u for u in self.uploads.values() if u.state == "stored" and u.live and not u.busy]
            if not ready:
                return None
            upload = rng.choice(ready)
            upload.busy = True
            return upload

    def pick_subject(self, rng: random.Random) -> list[Upload] | None:
        """A subject whose uploads are all answered (and no more will come), none uncertain or busy, some live."""
        with self.lock:
            ready = []
            for keys in self.groups.values():
                ups = [self.uploads[k] for k in keys]
                if (
                    len(ups) == UPLOADS_PER_SUBJECT
                    and all(u.state in ("stored", "refused") and not u.busy for u in ups)
                    and any(u.live for u in ups)
                ):
                    ready.append(ups)
            if not ready:
                return None
            chosen = rng.choice(ready)
            for u in chosen:
                u.busy = True
            return chosen

    def deleted_ok(self, uploads: list[Upload], expected: set[str], answer: list[str], what: str) -> None:
        """Book a delete answered 200. When it named other faces than expected, that is an anomaly, and every
        upload it touched is resolved from the service at the end."""
        with self.lock:
            got = set(answer)
            touched = uploads
            if got != expected:
                self.anomalies.append(
                    f"{what}: answer named {len(got)} faces, the ledger expected {len(expected)} "
                    f"(unexpected {sorted(got - expected)[:3]}, missing "
                    f"{sorted(expected - got)[:3]})"
                )
                keys = {u.key for u in uploads}
                touched = [u for u in self.uploads.values() if u.key in keys or u.live & got]
            for u in touched:
                u.live -= got
                u.busy = False
                if got != expected:
                    u.state = "uncertain"
            self.deleted |= got

    def uncertain(self, uploads: list[Upload]) -> None:
        with self.lock:
            for u in uploads:
                u.state, u.busy = "uncertain", False


# ------------------------------------------------------------------------------------------------ stats
class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.answers: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.last: dict[tuple[str, str], float] = {}  # (kind, status) -> seconds into the run of the latest

    def record(self, kind: str, status: str, seconds: float) -> None:
        with self.lock:
            self.answers[kind].append((status, seconds))
            self.last[kind, status] = time.monotonic() - self.started


# ------------------------------------------------------------------------------------------------ traffic
class Traffic:
    def __init__(self, server: Server, args: argparse.Namespace, variants: Variants, ledger: Ledger) -> None:
        self.server = server
        self.args = args
        self.variants = variants
        self.ledger = ledger
        self.stats = Stats()
        self.port = int(server.base_url.rsplit(":", 1)[1])
        self.bomb = zero_png(40_000, 40_000)
        self.flat = zero_png(7000, 7000)
        self.truncated = variants.queries[0][: len(variants.queries[0]) // 2]
        self.not_image = b"%PDF-1.4\n% not an image at all\n" + bytes(range(256)) * 64
        self.flat_turn = itertools.count()
        self.actions: dict[str, Callable[[httpx.Client, random.Random], None]] = {
            "search": self.search,
            "index": self.index,
            "delete_id": self.delete_id,
            "delete_file": self.delete_file,
            "delete_subject": self.delete_subject,
            "hostile": self.hostile,
            "disconnect": self.disconnect,
        }

    def call(self, kind: str, send: Callable[[], httpx.Response]) -> tuple[str, httpx.Response | None]:
        started = time.perf_counter()
        try:
            response: httpx.Response | None = send()
            status = str(response.status_code) if response is not None else "none"
        except httpx.HTTPError as exc:
            response, status = None, type(exc).__name__
        self.stats.record(kind, status, time.perf_counter() - started)
        return status, response

    # -------------------------------------------------------------- kinds
    def search(self, http: httpx.Client, rng: random.Random) -> None:
        query = rng.choice(self.variants.queries)
        self.call("search", lambda: http.post("/api/search", files={"file": ("q.jpg", query, "image/jpeg")}))

    def index(self, http: httpx.Client, rng: random.Random) -> None:
        key = self.ledger.new_key()
        photo, data = self.variants.make(key)
        upload = self.ledger.add(key, photo, data)
        status, response = self.call(
            "index",
            lambda: http.post(
                "/api/faces",
                files={"file": (f"{key}.jpg", data, "image/jpeg")},
                data={"subject": upload.subject, "source": upload.source},
            ),
        )
        if status == "201" and response is not None:
            self.ledger.answered(upload, "stored", response.json()["ids"])
        elif status in ("503", "400", "413", "415"):
            self.ledger.answered(upload, "refused", [])
        else:  # no answer, a timeout or a server error: resolved at the end
            self.ledger.answered(upload, "uncertain")

    def _delete(
        self,
        kind: str,
        http: httpx.Client,
        uploads: list[Upload],
        expected: set[str],
        path: str,
        params: dict[str, str] | None,
        what: str,
    ) -> None:
        status, response = self.call(kind, lambda: http.delete(path, params=params))
        if status == "200" and response is not None:
            self.ledger.deleted_ok(uploads, expected, response.json()["deleted"], what)
        elif status == "404":
            self.ledger.anomaly(f"{what}: 404 for faces the ledger says exist ({len(expected)})")
            self.ledger.uncertain(uploads)
        else:
            self.ledger.uncertain(uploads)

    def delete_id(self, http: httpx.Client, rng: random.Random) -> None:
        picked = self.ledger.pick_id(rng)
        if picked is None:
            return self.index(http, rng)
        upload, face_id = picked
        self._delete("delete_id", http, [upload], {face_id}, f"/api/faces/{face_id}", None, f"delete id {face_id}")

    def delete_file(self, http: httpx.Client, rng: random.Random) -> None:
        upload = self.ledger.pick_file(rng)
        if upload is None:
            return self.index(http, rng)
        self._delete(
            "delete_file",
            http,
            [upload],
            set(upload.live),
            "/api/faces",
            {"file": upload.source},
            f"delete file {upload.source}",
        )

    def delete_subject(self, http: httpx.Client, rng: random.Random) -> None:
        uploads = self.ledger.pick_subject(rng)
        if uploads is None:
            return self.index(http, rng)
        expected = set().union(*(u.live for u in uploads))
        subject = uploads[0].subject
        self._delete(
            "delete_subject", http, uploads, expected, "/api/faces", {"subject": subject}, f"delete subject {subject}"
        )

    def hostile(self, http: httpx.Client, rng: random.Random) -> None:
        which = rng.choice(HOSTILE)
        if which == "bomb":
            self.call("bomb", lambda: http.post("/api/search", files={"file": ("bomb.png", self.bomb, "image/png")}))
        elif which == "flat_batch":
            count = 32 if next(self.flat_turn) % 2 == 0 else 4
            files = [("files", (f"flat{i}.png", self.flat, "image/png")) for i in range(count)]
            self.call(f"flat_batch_{count}", lambda: http.post("/api/search/batch", files=files))
        elif which == "truncated":
            self.call(
                "truncated", lambda: http.post("/api/search", files={"file": ("cut.jpg", self.truncated, "image/jpeg")})
            )
        elif which == "not_image":
            self.call(
                "not_image", lambda: http.post("/api/faces", files={"file": ("doc.jpg", self.not_image, "image/jpeg")})
            )
        else:
            boundary = uuid.uuid4().hex
            size = int(self.args.chunked_mb * MB)
            self.call(
                "chunked",
                lambda: http.post(
                    "/api/search",
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                    content=chunked_body(size, boundary),
                ),
            )

    def disconnect(self, http: httpx.Client, rng: random.Random) -> None:
        """A raw socket: the request line and headers, then half the body or all of it, then close."""
        half = rng.random() < 0.5
        kind = "disconnect_half" if half else "disconnect_sent"
        if rng.random() < 0.5:
            path, body, ctype = (
                "/api/search",
                *multipart({}, ("q.jpg", rng.choice(self.variants.queries), "image/jpeg")),
            )
        else:
            key = self.ledger.new_key(gone=True)
            photo, data = self.variants.make(key)
            upload = self.ledger.add(key, photo, data, gone=True)
            path, body, ctype = (
                "/api/faces",
                *multipart({"subject": upload.subject, "source": upload.source}, (f"{key}.jpg", data, "image/jpeg")),
            )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        status = "closed"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(head + (body[: len(body) // 2] if half else body))
                time.sleep(rng.uniform(0.0, 0.2 if half else 0.6))  # some reach the engine before the close
        except OSError as exc:
            status = type(exc).__name__
        self.stats.record(kind, status, time.perf_counter() - started)

    # -------------------------------------------------------------- run
    def client(self, index: int, end: float) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        with httpx.Client(base_url=self.server.base_url, timeout=self.args.timeout) as http:
            for _ in range(1_000_000):  # bounded; the deadline ends it first
                if time.monotonic() >= end or not self.server.alive():
                    return
                kind = rng.choices(kinds, weights)[0]
                try:
                    self.actions[kind](http, rng)
                except Exception:  # a bug here must not end the soak silently
                    logger.exception("client %d: %s failed", index, kind)
                    self.stats.record(kind, "client-error", 0.0)

    def run(self, seconds: float) -> list[tuple[float, int]]:
        """Traffic for `seconds`; returns the service's RSS (kB) sampled every --sample-s seconds."""
        end = time.monotonic() + seconds
        self.stats.started = time.monotonic()
        threads = [
            threading.Thread(target=self.client, args=(i, end), name=f"soak-{i}", daemon=True)
            for i in range(self.args.clients)
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        next_log = started
        while time.monotonic() < end and self.server.alive():
            memory = self.server.memory_kb()
            if memory:
                samples.append((time.monotonic() - started, memory["VmRSS"]))
            if time.monotonic() >= next_log:
                answered = sum(len(v) for v in self.stats.answers.values())
                logger.info(
                    "%4.0f s: %d requests, %d faces live, RSS %.0f MB",
                    time.monotonic() - started,
                    answered,
                    sum(len(u.live) for u in list(self.ledger.uploads.values())),
                    memory.get("VmRSS", 0) / 1024,
                )
                next_log += 30
            time.sleep(min(self.args.sample_s, max(0.0, end - time.monotonic())))
        for t in threads:
            t.join(self.args.timeout + 30)
        return samples


# ------------------------------------------------------------------------------------------------ checks
class Prober:
    """The integrity phase's requests, bounded: each has a timeout, the phase has a deadline, and after
    BREAKER transport failures in a row the service is taken as unresponsive and the rest are not sent."""

    BREAKER = 5

    def __init__(self, http: httpx.Client, seconds: float) -> None:
        self.http = http
        self.deadline = time.monotonic() + seconds
        self.failures = 0
        self.unanswered = 0

    @property
    def given_up(self) -> bool:
        return self.failures >= self.BREAKER or time.monotonic() > self.deadline

    def send(
        self, method: str, path: str, *, force: bool = False, **kwargs: object
    ) -> tuple[str, httpx.Response | None]:
        """(status, response): the status code as text, or why there is none (the error's name, "skipped").
        force: send it even when the phase has given up."""
        if self.given_up and not force:
            self.unanswered += 1
            return "skipped", None
        try:
            response = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.failures += 1
            self.unanswered += 1
            return type(exc).__name__, None
        self.failures = 0
        return str(response.status_code), response

    def status(self, method: str, path: str, *, force: bool = False, **kwargs: object) -> str:
        return self.send(method, path, force=force, **kwargs)[0]


def settle(probe: Prober, seconds: float = 90.0) -> None:
    """Wait (bounded) until no inference runs or waits, twice in a row 2 s apart (writes after inference
    finish within that)."""
    deadline = time.monotonic() + seconds
    quiet = 0
    while time.monotonic() < deadline and quiet < 2 and not probe.given_up:
        status, response = probe.send("GET", "/status")
        try:
            body = response.json() if status == "200" and response is not None else {}
        except ValueError:
            body = {}
        quiet = quiet + 1 if body and not body.get("inference_in_use") and not body.get("inference_waiting") else 0
        time.sleep(2.0)


def resolve(probe: Prober, ledger: Ledger) -> tuple[int, int, int]:
    """The uncertain uploads' live faces, from the service: a face is there when its thumbnail is served (200),
    gone when it is not (404). Returns (uploads resolved, faces found, uploads left unresolved: no clear answer)."""
    uploads = [u for u in ledger.uploads.values() if u.state in ("uncertain", "pending")]
    found = unresolved = 0
    for u in uploads:
        if u.ids:  # answered, then a delete's outcome was lost: its ids are known
            candidates = set(u.live)
            answers = {i: probe.status("GET", f"/thumbs/{i}") for i in sorted(candidates)}
            u.live = {i for i, status in answers.items() if status == "200"}
            ledger.deleted |= {i for i, status in answers.items() if status == "404"}
            unclear = any(status not in ("200", "404") for status in answers.values())
        else:  # no answer to the upload: the faces of one image are written together, ids 0..n-1
            u.live = set()
            unclear = False
            for index in range(128):
                pid = point_id(u.sha, index)
                status = probe.status("GET", f"/thumbs/{pid}")
                if status != "200":
                    unclear = status != "404"
                    break
                u.live.add(pid)
            u.ids = sorted(u.live)
        unresolved += unclear
        found += len(u.live)
    return len(uploads), found, unresolved


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def stored_files(thumbs: Path) -> tuple[set[str], list[Path]]:
    """Ids of the thumbnail files in place, and the files left under .pending."""
    ids = {p.stem for p in thumbs.glob("*/*.jpg") if p.parent.name != ".pending"}
    pending = [p for p in (thumbs / ".pending").iterdir()] if (thumbs / ".pending").is_dir() else []
    return ids, pending


def integrity(
    server: Server, ledger: Ledger, variants: Variants, baseline_vectors: int, rng: random.Random, seconds: float
) -> tuple[list[Check], str]:
    with httpx.Client(base_url=server.base_url, timeout=20) as http:
        probe = Prober(http, seconds)
        settle(probe)
        resolved, resolved_faces, unresolved = resolve(probe, ledger)
        live = set().union(*(u.live for u in ledger.uploads.values())) if ledger.uploads else set()
        deleted = ledger.deleted - live
        checks: list[Check] = []

        answers = Counter(probe.status("GET", f"/thumbs/{i}") for i in sorted(live))
        checks.append(
            Check(
                "live faces served",
                answers["200"] == len(live),
                f"{answers['200']}/{len(live)} GET /thumbs 200"
                + (
                    f"; others {dict(answers - Counter({'200': answers['200']}))}"
                    if answers["200"] != len(live)
                    else ""
                ),
            )
        )

        with_live = [u for u in ledger.uploads.values() if u.live]
        with_deleted = [u for u in ledger.uploads.values() if set(u.ids) & deleted]
        sample = rng.sample(with_live, min(SAMPLE, len(with_live)))
        sampled = {u.key for u in sample}
        erased_sample = rng.sample(with_deleted, min(SAMPLE, len(with_deleted)))
        not_found: list[str] = []
        failed: Counter[str] = Counter()
        served_erased: list[str] = []
        searched = bad_bytes = found = 0
        for u in sample + erased_sample:
            photo, data = variants.make(u.key)
            if hashlib.sha256(data).hexdigest() != u.sha:
                bad_bytes += 1
                continue
            status, response = probe.send(
                "POST", "/api/search", params={"top_k": 100}, files={"file": ("own.jpg", data, "image/jpeg")}
            )
            if status != "200" or response is None:
                failed[status] += 1
                continue
            searched += 1
            matched = {m["id"] for f in response.json()["faces"] for m in f["matches"]}
            if u.key in sampled:
                if u.live <= matched:
                    found += 1
                else:
                    not_found.append(f"{u.source}: {len(u.live - matched)} of {len(u.live)} faces not found")
            served_erased.extend(sorted(matched & deleted))
        checks.append(
            Check(
                "found by own photo",
                not not_found and not failed and not bad_bytes and bool(sample),
                f"{found}/{len(sample)} uploads found all their live faces; {searched} searches "
                f"answered 200"
                + (f", others {dict(failed)}" if failed else "")
                + (f"; {bad_bytes} photos not rebuilt byte for byte" if bad_bytes else "")
                + (f"; e.g. {not_found[:2]}" if not_found else ""),
            )
        )

        answers = Counter(probe.status("GET", f"/thumbs/{i}") for i in sorted(deleted))
        checks.append(
            Check(
                "erased not served",
                answers["404"] == len(deleted) and not served_erased,
                f"{answers['404']}/{len(deleted)} deleted ids GET /thumbs 404"
                + (
                    f" (others {dict(answers - Counter({'404': answers['404']}))})"
                    if answers["404"] != len(deleted)
                    else ""
                )
                + f"; {len(set(served_erased))} deleted ids in {searched} searches",
            )
        )

        checks.append(
            Check(
                "delete answers",
                not ledger.anomalies,
                f"{len(ledger.anomalies)} deletes answered other than the ledger expected"
                + (f"; e.g. {ledger.anomalies[:2]}" if ledger.anomalies else ""),
            )
        )

        on_disk, pending = stored_files(server.thumbs_dir)
        extra, absent = on_disk - live, live - on_disk
        checks.append(
            Check(
                "files = ledger",
                not extra and not absent and not unresolved,
                f"{len(on_disk)} thumbnail files, {len(live)} live ids; {len(extra)} files without a "
                f"live id, {len(absent)} live ids without a file"
                + (f"; {unresolved} uploads the service could not settle" if unresolved else "")
                + (f"; orphans e.g. {sorted(extra)[:3]}" if extra else ""),
            )
        )

        status, response = probe.send("GET", "/status")
        vectors = int(response.json()["vectors"]) - baseline_vectors if status == "200" and response else None
        checks.append(
            Check(
                "vectors = ledger",
                vectors == len(live),
                f"GET /status {'vectors ' + str(vectors) if vectors is not None else status} "
                f"(+{baseline_vectors} before the run), ledger live {len(live)}",
            )
        )
        checks.append(
            Check(
                "nothing pending",
                not pending,
                f"{len(pending)} files under THUMBS_DIR/.pending"
                + (f", e.g. {[p.name for p in pending[:2]]}" if pending else ""),
            )
        )
        health = probe.status("GET", "/health", force=True)  # these two are asked whatever happened before
        checks.append(Check("healthy", health == "200", f"GET /health {health}"))
        # /health does not ask the engine: one search must still be answered.
        started = time.perf_counter()
        answer = probe.status(
            "POST", "/api/search", force=True, files={"file": ("q.jpg", variants.queries[0], "image/jpeg")}
        )
        checks.append(
            Check(
                "serves a search",
                answer == "200",
                f"POST /api/search {answer} in {time.perf_counter() - started:.1f} s",
            )
        )
    note = (
        f"{len(ledger.uploads)} uploads, {len(live)} faces live, {len(deleted)} deleted; {resolved} uploads "
        f"with an unknown outcome resolved from the service ({resolved_faces} faces present, {unresolved} "
        f"unsettled); {probe.unanswered} check requests unanswered"
    )
    return checks, note


# ------------------------------------------------------------------------------------------------ output
def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(np.asarray(values) * 1e3, q):.0f}" if values else "-"


def print_answers(stats: Stats, seconds: float) -> int:
    """Answers per kind; returns how many were unexpected."""
    print(
        f"answers per kind over {seconds / 60:.1f} min (latency in ms; unexpected: outside the kind's expected answers)"
    )
    header = f"{'kind':<16} {'requests':>8} {'p50':>7} {'p95':>7} {'unexp.':>6}  statuses"
    print(header)
    print("-" * 100)
    unexpected_total = 0
    for kind in sorted(stats.answers):
        answers = stats.answers[kind]
        counts = Counter(s for s, _ in answers)
        unexpected = sum(n for s, n in counts.items() if s not in EXPECTED.get(kind, set()))
        unexpected_total += unexpected
        print(
            f"{kind:<16} {len(answers):>8} {ms([t for _, t in answers], 50):>7} {ms([t for _, t in answers], 95):>7} "
            f"{unexpected:>6}  {', '.join(f'{s} x{n}' for s, n in sorted(counts.items()))}"
        )
    total = sum(len(v) for v in stats.answers.values())
    print(f"{'all':<16} {total:>8}   ({total / seconds:.1f} requests/s)")
    last = [
        f"{kind} {status} at {stats.last[kind, status]:.0f} s"
        for kind, status in (("search", "200"), ("index", "201"))
        if (kind, status) in stats.last
    ]
    print(f"latest engine answers: {', '.join(last) or 'none'} (of {seconds:.0f} s)")
    return unexpected_total


def log_errors(server: Server) -> Counter[str]:
    """The service log's errors, counted by kind: the logged line (without its time) and the exception that ends
    its traceback, if any."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return Counter()
    found: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if not (re.search(r" (ERROR|CRITICAL) ", line) or line.startswith("Exception in thread")):
            continue
        header = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)
        exception = ""
        j = i + 1
        while j < len(lines) and j <= i + 3 and not lines[j].startswith("Traceback"):
            j += 1
        if j < len(lines) and lines[j].startswith("Traceback"):
            j += 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            exception = lines[j] if j < len(lines) else ""
        found[f"{header} -> {exception}" if exception else header] += 1
    return found


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of traffic (default 5)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client seconds per request (default 60)")
    parser.add_argument("--chunked-mb", type=float, default=30.0, help="size of the chunked upload (default 30)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument(
        "--check-minutes", type=float, default=10.0, help="at most this long for the integrity checks (default 10)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the service (repeatable), e.g. --env GPU_ACQUIRE_TIMEOUT=2",
    )
    parser.add_argument("--app-dir", type=Path, default=REPO, help="checkout whose `app` is run (default: this)")
    parser.add_argument(
        "--state-dir", type=Path, help="the service's state folder, kept afterwards (default: a temporary one, removed)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 1 <= args.clients <= 500:
        parser.error("--minutes must be in (0, 120], --clients in [1, 500]")
    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    run = uuid.uuid4().hex[:8]
    variants = Variants(run)
    ledger = Ledger(run)
    if args.state_dir is not None and args.state_dir.exists() and any(args.state_dir.iterdir()):
        parser.error(f"--state-dir {args.state_dir} is not empty")
    with live_server(args.app_dir, env=env, prefix="oceano-soak-", state=args.state_dir) as server:
        traffic = Traffic(server, args, variants, ledger)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            baseline_vectors = int(http.get("/status").json()["vectors"])
        reset_peak(server.pid)
        logger.info(
            "soak: %d clients for %.1f min against %s (%d photos, run %s)",
            args.clients,
            args.minutes,
            server.base_url,
            len(variants.images),
            run,
        )
        started, load_before = time.monotonic(), os.getloadavg()[0]
        samples = traffic.run(args.minutes * 60)
        load_after = os.getloadavg()[0]
        seconds = time.monotonic() - started
        alive = server.alive()
        if alive:
            logger.info("traffic stopped after %.0f s; integrity check", seconds)
            checks, note = integrity(
                server, ledger, variants, baseline_vectors, random.Random(args.seed), args.check_minutes * 60
            )
            memory = server.memory_kb()
        else:
            checks, note, memory = [Check("service alive", False, f"exited with {server.proc.returncode}")], "", {}
        errors = log_errors(server)

    print(
        f"soak: {args.clients} clients, {seconds / 60:.1f} min, service {args.app_dir.resolve()}, settings "
        f"{env or 'default'}; machine load average {load_before:.1f} -> {load_after:.1f} ({os.cpu_count()} CPUs)"
    )
    unexpected = print_answers(traffic.stats, seconds)
    print(
        f"  {'PASS' if not unexpected else 'FAIL'}  every answer among its kind's expected ones "
        f"({unexpected} unexpected)"
    )
    print(f"integrity ({note})")
    for c in checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<20} {c.detail}")
    rss = [kb for _, kb in samples]
    if rss:
        quarter = [rss[min(len(rss) - 1, round(q * (len(rss) - 1)))] / 1024 for q in (0, 0.25, 0.5, 0.75, 1)]
        print(
            f"memory: warm RSS {server.warm_rss_kb / 1024:.0f} MB; RSS over the run (0/25/50/75/100 %) "
            f"{' / '.join(f'{v:.0f}' for v in quarter)} MB, max sampled {max(rss) / 1024:.0f} MB"
        )
    if memory:
        print(
            f"memory at the end: RSS {memory['VmRSS'] / 1024:.0f} MB, peak (VmHWM, since the traffic began) "
            f"{memory['VmHWM'] / 1024:.0f} MB"
        )
    print(f"service log: {sum(errors.values())} errors" + (", by kind:" if errors else ""))
    for text, count in errors.most_common(10):
        print(f"  {count:>5} x {text[:220]}")
    raise SystemExit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
