"""One loaded head: an ONNX model checked against its spec at load, the crops it reads, batched runs, and the
decoding of its output into the keys it adds to a face."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from app.engine.model import OnnxModel, Shape
from app.engine.runtime import Runtime
from app.errors import ModelPackError
from app.faces import Face
from app.heads.spec import ColorMode, CropSource, HeadSpec, Layout, OutputKind


def box_crop(image: np.ndarray, bbox: np.ndarray, size: tuple[int, int], margin: float) -> np.ndarray:
    """The square box of side max(w, h) * (1 + 2 * margin) around the box centre, resized to `size` (w, h).
    For a non-square input the box spans the shorter input side. Pixels outside the image repeat the edge
    (the nearest thing to the grey padding fer uses). Bilinear, as fer (cv2.resize) and InsightFace
    (warpAffine) resize for these models; area interpolation gave the same agreement with fer at 6x the cost."""
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin)
    width, height = size
    scale = min(width, height) / side
    region_w, region_h = max(1, round(width / scale)), max(1, round(height / scale))
    left = round((x1 + x2) / 2 - region_w / 2)
    top = round((y1 + y2) / 2 - region_h / 2)
    img_h, img_w = image.shape[:2]
    # Keep at least one image pixel inside the region, so the edge can be repeated.
    left = min(max(left, 1 - region_w), img_w - 1)
    top = min(max(top, 1 - region_h), img_h - 1)
    right, bottom = left + region_w, top + region_h
    roi = image[max(top, 0) : min(bottom, img_h), max(left, 0) : min(right, img_w)]
    pads = (max(0, -top), max(0, bottom - img_h), max(0, -left), max(0, right - img_w))
    if any(pads):
        roi = cv2.copyMakeBorder(roi, *pads, cv2.BORDER_REPLICATE)
    return cv2.resize(roi, (width, height), interpolation=cv2.INTER_LINEAR)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- one head
@dataclass(frozen=True, slots=True)
class ModelInfo:
    file: str
    sha256: str
    input_name: str
    input_shape: list[int | str]
    output_name: str
    output_shape: list[int | str]
    parameters: int
    opset: int
    providers: list[str]


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


class Head(OnnxModel):
    """One loaded head. `predict` takes prepared crops (H x W x C uint8) and returns the model's output rows. The
    session, batch sizes, padding and warm-up are the engine's OnnxModel: a head is warmed at every batch size
    when it is loaded."""

    def __init__(
        self, spec: HeadSpec, path: Path, *, runtime: Runtime, batch_sizes: Sequence[int], origin: str
    ) -> None:
        self.spec = spec
        self.path = path
        self.origin = origin
        where = f"head '{spec.name}' ({path})"
        if not path.is_file():
            raise ModelPackError(f"{where}: model file not found")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises several unrelated types on garbage
            raise ModelPackError(f"{where}: not a readable ONNX model: {exc}") from exc
        initializers = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if len(inputs) != 1 or not model.graph.output:
            raise ModelPackError(
                f"{where}: a head takes one input tensor and gives one output; the model has "
                f"{len(inputs)} inputs and {len(model.graph.output)} outputs"
            )
        if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelPackError(f"{where}: the model input must be float32")
        declared = dims(inputs[0])
        expected = self._expected_input()
        if len(declared) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(declared[1:], expected[1:], strict=True)
        ):
            raise ModelPackError(
                f"{where}: the model input is {declared}, but the spec ({spec.layout.value}, "
                f"{spec.color.value}, {spec.input_size[0]}x{spec.input_size[1]}) gives "
                f"{['N', *expected[1:]]}"
            )
        output = model.graph.output[0]
        producer = {out: node for node in model.graph.node for out in node.output}.get(output.name)
        # A softmax head whose graph stops at the logits still answers probabilities.
        self._apply_softmax = spec.output is OutputKind.SOFTMAX and (producer is None or producer.op_type != "Softmax")
        super().__init__(model, path=path, name=path.name, runtime=runtime, batch_sizes=batch_sizes)
        self.output_name = self.output_names[0]
        self.warmed: dict[Shape, float] = {}  # seconds per input shape, from the warm-up in _check_output
        self.info = ModelInfo(
            file=path.name,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            input_name=self.input_name,
            input_shape=declared,
            output_name=output.name,
            output_shape=dims(output),
            parameters=sum(int(np.prod(t.dims)) for t in model.graph.initializer),
            opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            providers=self.session.get_providers(),
        )
        self._check_output(where)

    def _expected_input(self) -> list[int]:
        width, height = self.spec.input_size
        c = self.spec.channels
        return [1, c, height, width] if self.spec.layout is Layout.NCHW else [1, height, width, c]

    def input_shapes(self) -> Sequence[tuple[int, ...]]:
        return [(size, *self._expected_input()[1:]) for size in self.batch_sizes]

    def _check_output(self, where: str) -> None:
        """Warms every batch size, then a dry run on a blank batch: proves the model runs and gives one row of the
        right width per crop."""
        width, height = self.spec.input_size
        n = min(2, self.max_batch)
        blank = [np.zeros((height, width, self.spec.channels), np.uint8)] * n
        try:
            self.warmed = self.warm_up()
            out = self.infer(self.blob(blank))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelPackError(f"{where}: a trial run on a blank input failed: {exc}") from exc
        if out.ndim != 2 or out.shape != (n, self.spec.output_width):
            want = f"[N, {self.spec.output_width}]"
            what = {
                OutputKind.GENDERAGE: "female, male, age/100",
                OutputKind.SOFTMAX: f"one score per label: {len(self.spec.labels)}",
                OutputKind.REGRESSION: "one value per label, or one value without labels",
            }[self.spec.output]
            raise ModelPackError(
                f"{where}: the model answers shape {list(out.shape)} for {n} input(s); the spec needs {want} ({what})"
            )

    @property
    def name(self) -> str:
        return self.spec.name

    def prepare(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The crop this head reads, in its colour mode and size: (H, W, C) uint8."""
        size = self.spec.input_size
        if self.spec.crop is CropSource.BOX:
            crop = box_crop(image, face.bbox, size, self.spec.margin)
        else:
            if face.crop is None:
                raise ValueError("face has no aligned crop")
            crop = (
                face.crop
                if face.crop.shape[1::-1] == size
                else cv2.resize(face.crop, size, interpolation=cv2.INTER_AREA)
            )
        if self.spec.color is ColorMode.GRAY:
            return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)[..., None]
        if self.spec.color is ColorMode.RGB:
            return crop[..., ::-1]
        return crop

    def blob(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        mean = np.asarray(self.spec.normalize.mean, np.float32)
        std = np.asarray(self.spec.normalize.std, np.float32)
        x: np.ndarray = (np.stack(crops).astype(np.float32) - mean) / std  # N, H, W, C
        if self.spec.layout is Layout.NCHW:
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def infer(self, blob: np.ndarray, size: int | None = None) -> np.ndarray:
        """One ONNX run at batch `size` (default: the smallest that holds the blob); tests count these."""
        out = self.run_blob(blob, size)[0]
        return np.asarray(out, dtype=np.float32).reshape(len(blob), -1)

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Output rows for prepared crops, in chunks of the head's batch sizes."""
        rows = [self.infer(self.blob(crops[c.start : c.stop]), c.size) for c in self.chunks(len(crops))]
        out = np.concatenate(rows) if rows else np.zeros((0, self.spec.output_width), np.float32)
        return _softmax(out) if self._apply_softmax else out

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        """One face's output as the keys it adds to the face's answer."""
        spec = self.spec
        if spec.output is OutputKind.GENDERAGE:
            return {"gender": spec.gender_labels[int(np.argmax(row[:2]))], "age": int(np.round(row[2] * 100))}
        if spec.output is OutputKind.SOFTMAX:
            scores = {label: round(float(v), 6) for label, v in zip(spec.labels, row, strict=True)}
            return {spec.name: {"label": spec.labels[int(np.argmax(row))], "scores": scores}}
        if spec.labels:
            return {spec.name: {label: round(float(v), 6) for label, v in zip(spec.labels, row, strict=True)}}
        return {spec.name: round(float(row[0]), 6)}

    def run(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
        """Once over every face of an engine call (one batch, chunked by the head's batch size); the answers
        go to `Face.attributes`. `faces[i]` are the faces found in `images[i]`, in that image's pixels."""
        flat = [(image, face) for image, row in zip(images, faces, strict=True) for face in row]
        if not flat:
            return
        rows = self.predict([self.prepare(image, face) for image, face in flat])
        for (_, face), row in zip(flat, rows, strict=True):
            face.attributes.update(self.decode(row))


def run_heads(heads: Sequence[Head], images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
    """Each head once over every face of the call (what FaceEngine.analyze_batch does with its heads)."""
    for head in heads:
        head.run(images, faces)
