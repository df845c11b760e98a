"""The soak's traffic: the clients' actions with their weights and expected answers, the photo variants they
upload, and the answers they got (Stats)."""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator

import cv2
import httpx
import numpy as np

from bench.common import EVAL_DIR, Photos
from bench.hostile import zero_png
from bench.live import Server, multipart
from bench.photos import eval_photos
from bench.soak.ledger import Ledger, Upload

logger = logging.getLogger(__name__)
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
