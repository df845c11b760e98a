"""Raw ONNX Runtime sessions of the bundled SCRFD and ArcFace on a GPU: the first call and the warm mean at each
batch size, for each cudnn_conv_algo_search mode and for the float blob against the uint8 image input
(app.engine.graph). What docs/PERFORMANCE.md's "cuDNN convolution search" and "Detector input" tables come from.

    source /tmp/gpu/env.sh; python3 -m bench.gpu_probe --modes HEURISTIC,EXHAUSTIVE,DEFAULT 2>/dev/null
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort

from app.engine.graph import IMAGE_INPUT, with_image_input
from bench.common import VECTRON_DIR

MODELS = (
    ("scrfd_500m_bnkps.onnx", 640, 127.5, 128.0, (1, 16, 64)),
    ("w600k_mbf.onnx", 112, 127.5, 127.5, (1, 32, 128)),
)


def timed(session: ort.InferenceSession, feed: dict[str, np.ndarray], reps: int) -> tuple[float, float]:
    started = time.perf_counter()
    session.run(None, feed)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(reps):
        session.run(None, feed)
    return first, (time.perf_counter() - started) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="HEURISTIC", help="cudnn_conv_algo_search values, comma-separated")
    parser.add_argument("--reps", type=int, default=30, help="warm runs per row")
    parser.add_argument("--provider", default="CUDAExecutionProvider", help="CPUExecutionProvider for a dry run")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        options = {"cudnn_conv_algo_search": mode} if args.provider == "CUDAExecutionProvider" else {}
        providers = [(args.provider, options), "CPUExecutionProvider"]
        for name, size, mean, std, batches in MODELS:
            model = onnx.load(str(VECTRON_DIR / name))
            plain = ort.InferenceSession(str(VECTRON_DIR / name), providers=providers)
            image = ort.InferenceSession(
                with_image_input(model, mean=mean, std=std).SerializeToString(), providers=providers
            )
            for batch in batches:
                pixels = np.random.randint(0, 255, (batch, size, size, 3), np.uint8)
                blob = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).astype(np.float32))
                row = []
                for label, session, feed in (
                    ("float", plain, {plain.get_inputs()[0].name: blob}),
                    ("uint8", image, {IMAGE_INPUT: pixels}),
                ):
                    first, warm = timed(session, feed, args.reps)
                    row.append(
                        f"{label} first {first * 1e3:.0f} warm {warm * 1e3:.2f} ms ({warm * 1e3 / batch:.3f}/item)"
                    )
                print(f"{mode} {name} b{batch}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
