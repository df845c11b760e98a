"""The "same person" threshold in force: calibrated per collection and model fingerprint (STATE_DIR/calibration.json,
written by `python -m app.calibrate --apply`), else the default measured for the pack."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import IncompatibleState

CALIBRATION_FILE = "calibration.json"

# Cosine thresholds at FAR 1e-3 measured on ../shared/eval/faces-a (60 photos, 13 identities, 1,770 pairs) with
# `python -m app.calibrate ../shared/eval/faces-a` (docs/CALIBRATION.md). antelopev2 cannot be measured on the
# development machines (its files are not shipped in a package): its value is the bundled pack's until measured.
DEFAULT_THRESHOLDS: dict[str, float] = {"bundled": 0.36}
FALLBACK_THRESHOLD = 0.36


@dataclass(frozen=True, slots=True)
class CalibratedThreshold:
    threshold: float
    source: str  # "default" or what it was calibrated on
    far_target: float | None = None
    far: float | None = None
    frr: float | None = None
    eer: float | None = None
    genuine_pairs: int = 0
    impostor_pairs: int = 0
    measured_at: str = ""


def default_threshold(pack_name: str) -> CalibratedThreshold:
    value = DEFAULT_THRESHOLDS.get(pack_name, FALLBACK_THRESHOLD)
    return CalibratedThreshold(threshold=value, source=f"default for pack {pack_name}")


class ThresholdStore:
    """One JSON file: {"collection|fingerprint": CalibratedThreshold}, replaced atomically, readable by its owner
    only."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CALIBRATION_FILE

    @staticmethod
    def key(collection: str, fingerprint: str) -> str:
        return f"{collection}|{fingerprint}"

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise IncompatibleState(f"{self.path} is not a readable calibration file ({exc}); move it away") from exc
        if not isinstance(data, dict):
            raise IncompatibleState(f"{self.path} is not a calibration file (a JSON object); move it away")
        return data

    def get(self, collection: str, fingerprint: str) -> CalibratedThreshold | None:
        entry = self._read().get(self.key(collection, fingerprint))
        return CalibratedThreshold(**entry) if isinstance(entry, dict) else None  # type: ignore[arg-type]

    def in_force(self, collection: str, fingerprint: str, pack_name: str) -> CalibratedThreshold:
        return self.get(collection, fingerprint) or default_threshold(pack_name)

    def put(self, collection: str, fingerprint: str, value: CalibratedThreshold) -> None:
        data = self._read()
        data[self.key(collection, fingerprint)] = asdict(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".calibration.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
