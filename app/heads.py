"""Classifier heads: small ONNX models that run on the faces the engine has already detected and aligned.

A head is an ONNX model plus a spec (HeadSpec): input size, layout, colour mode, normalisation, which crop it
reads (the 112x112 aligned crop, or a square box crop around the detector's box with a margin), and how to
read its output (softmax labels, regression values, or InsightFace's gender/age triple). The registry holds
the built-in heads (emotion; genderage when the model pack has genderage.onnx) and the user's heads from
HEADS_DIR. `run_heads` runs each selected head once, in one batch (chunked by REC_BATCH) over every face of an
engine call; the engine calls it inside its inference gate. Nothing here knows about HTTP.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import ModelPackError, NoSuchHead
from app.runtime import create_session, dynamic_batch_model

if TYPE_CHECKING:
    import onnxruntime as ort

    from app.engine import Face

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "heads"
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
GENDERAGE = "genderage"
# Keys a face already has in API answers; a head's output may not take them.
RESERVED_KEYS = frozenset({"bbox", "det_score", "kps", "matches", "embedding", "crop", "id", "heads"})
GENDERAGE_KEYS = ("gender", "age")


class ColorMode(StrEnum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class CropSource(StrEnum):
    ALIGNED = "aligned"  # the engine's 112x112 ArcFace-aligned crop (resized when the head wants another size)
    BOX = "box"  # square box of side max(w, h) * (1 + 2 * margin) around the detector box's centre


class OutputKind(StrEnum):
    SOFTMAX = "softmax"  # one score per label; softmax is applied when the graph does not end in one
    REGRESSION = "regression"  # raw values, one per label (or a single unlabelled value)
    GENDERAGE = "genderage"  # InsightFace attribute model: [female, male, age / 100]


class Normalize(BaseModel):
    """x = (pixel - mean) / std on 0..255 values, per channel in the model's colour order or one for all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float | tuple[float, float, float] = 0.0
    std: float | tuple[float, float, float] = 1.0

    @field_validator("std")
    @classmethod
    def _positive(cls, value: float | tuple[float, ...]) -> float | tuple[float, ...]:
        if any(v <= 0 for v in (value if isinstance(value, tuple) else (value,))):
            raise ValueError("std must be > 0")
        return value


class HeadSpec(BaseModel):
    """What a head's spec file holds. Unknown keys are refused so that typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    model: str | None = Field(default=None, description="ONNX file name next to the spec (default: <spec stem>.onnx)")
    input_size: tuple[int, int] = Field(description="(width, height) of the model input")
    layout: Layout = Layout.NCHW
    color: ColorMode = ColorMode.RGB
    normalize: Normalize = Normalize()
    crop: CropSource = CropSource.ALIGNED
    margin: float = Field(default=0.0, ge=0.0, le=2.0, description="box crop only: fraction of the side added "
                                                                    "on each side")
    output: OutputKind
    labels: tuple[str, ...] = ()
    description: str = ""
    source: str = ""

    @field_validator("input_size")
    @classmethod
    def _size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(8 <= v <= 1024 for v in value):
            raise ValueError("input_size sides must be between 8 and 1024")
        return value

    @field_validator("model")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or Path(value).name != value or value in (".", "..")):
            raise ValueError("model must be a file name in the spec's folder, not a path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadSpec:
        if self.name in RESERVED_KEYS or (self.output is not OutputKind.GENDERAGE and self.name in GENDERAGE_KEYS):
            raise ValueError(f"name {self.name!r} is reserved for a face field")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.output is OutputKind.SOFTMAX and len(self.labels) < 2:
            raise ValueError("a softmax head needs at least 2 labels")
        if self.output is OutputKind.GENDERAGE and len(self.labels) not in (0, 2):
            raise ValueError("a genderage head's labels are the two gender names (female first), e.g. [F, M]")
        channels = 1 if self.color is ColorMode.GRAY else 3
        for stat in (self.normalize.mean, self.normalize.std):
            if isinstance(stat, tuple) and channels == 1:
                raise ValueError("a gray head takes one mean and one std, not three")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color is ColorMode.GRAY else 3

    @property
    def gender_labels(self) -> tuple[str, str]:
        return (self.labels[0], self.labels[1]) if self.labels else ("F", "M")

    @property
    def output_width(self) -> int:
        if self.output is OutputKind.GENDERAGE:
            return 3
        return len(self.labels) or 1

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The keys this head adds to a face's answer."""
        return GENDERAGE_KEYS if self.output is OutputKind.GENDERAGE else (self.name,)


def genderage_spec(input_size: tuple[int, int] = (96, 96)) -> HeadSpec:
    """InsightFace's attribute model as its Attribute class feeds it: the box's longer side * 1.5 fills the
    input, centred on the box centre; RGB; no normalisation (the graph normalises itself)."""
    return HeadSpec(
        name=GENDERAGE, input_size=input_size, layout=Layout.NCHW, color=ColorMode.RGB,
        normalize=Normalize(mean=0.0, std=1.0), crop=CropSource.BOX, margin=0.25, output=OutputKind.GENDERAGE,
        labels=("F", "M"), description="InsightFace gender and age (genderage.onnx of the model pack): "
        "gender = the larger of the [female, male] scores, age = round(100 * third output).",
        source="InsightFace model pack (antelopev2, buffalo_l, ...)")


# ---------------------------------------------------------------------------------------------- spec files
def _load_mapping(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelPackError(f"head spec {path}: invalid JSON: {exc}") from exc
    try:
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise ModelPackError(f"head spec {path}: YAML specs need PyYAML (pip install pyyaml), or write the spec "
                             "as JSON") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelPackError(f"head spec {path}: invalid YAML: {exc}") from exc


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            parts.append(f"{where + ': ' if where else ''}{error['msg']}")
    return "; ".join(parts)


def read_spec(path: Path) -> HeadSpec:
    """Parse and validate one spec file; every problem is a ModelPackError naming the file."""
    data = _load_mapping(path)
    if not isinstance(data, dict):
        raise ModelPackError(f"head spec {path}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return HeadSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelPackError(f"head spec {path}: {_problems(exc)}") from exc


# ---------------------------------------------------------------------------------------------- crops
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
    roi = image[max(top, 0):min(bottom, img_h), max(left, 0):min(right, img_w)]
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


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


class Head:
    """One loaded head. `predict` takes prepared crops (H x W x C uint8) and returns the model's output rows."""

    def __init__(self, spec: HeadSpec, path: Path, *, providers: list[str], threads: int, batch: int,
                 origin: str) -> None:
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
            raise ModelPackError(f"{where}: a head takes one input tensor and gives one output; the model has "
                                 f"{len(inputs)} inputs and {len(model.graph.output)} outputs")
        if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelPackError(f"{where}: the model input must be float32")
        declared = _dims(inputs[0])
        expected = self._expected_input()
        if len(declared) != 4 or any(isinstance(d, int) and d != e for d, e in zip(declared[1:], expected[1:],
                                                                                     strict=True)):
            raise ModelPackError(f"{where}: the model input is {declared}, but the spec ({spec.layout.value}, "
                                 f"{spec.color.value}, {spec.input_size[0]}x{spec.input_size[1]}) gives "
                                 f"{['N', *expected[1:]]}")
        output = model.graph.output[0]
        producer = {out: node for node in model.graph.node for out in node.output}.get(output.name)
        # A softmax head whose graph stops at the logits still answers probabilities.
        self._apply_softmax = spec.output is OutputKind.SOFTMAX and (producer is None or producer.op_type
                                                                       != "Softmax")
        batched, changed = dynamic_batch_model(model)
        self.session: ort.InferenceSession = create_session(model.SerializeToString() if changed else path,
                                                            providers=providers, threads=threads, name=path.name)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.batch = batch if batched else 1
        self.info = ModelInfo(
            file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), input_name=self.input_name,
            input_shape=declared, output_name=output.name, output_shape=_dims(output),
            parameters=sum(int(np.prod(t.dims)) for t in model.graph.initializer),
            opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            providers=self.session.get_providers())
        self._check_output(where)

    def _expected_input(self) -> list[int]:
        width, height = self.spec.input_size
        c = self.spec.channels
        return [1, c, height, width] if self.spec.layout is Layout.NCHW else [1, height, width, c]

    def _check_output(self, where: str) -> None:
        """A dry run on a blank batch: proves the model runs and gives one row of the right width per crop."""
        width, height = self.spec.input_size
        n = min(2, self.batch)
        blank = [np.zeros((height, width, self.spec.channels), np.uint8)] * n
        try:
            out = self.infer(self.blob(blank))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelPackError(f"{where}: a trial run on a blank input failed: {exc}") from exc
        if out.ndim != 2 or out.shape != (n, self.spec.output_width):
            want = f"[N, {self.spec.output_width}]"
            what = {OutputKind.GENDERAGE: "female, male, age/100",
                    OutputKind.SOFTMAX: f"one score per label: {len(self.spec.labels)}",
                    OutputKind.REGRESSION: "one value per label, or one value without labels"}[self.spec.output]
            raise ModelPackError(f"{where}: the model answers shape {list(out.shape)} for {n} input(s); the spec "
                                 f"needs {want} ({what})")

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
            crop = face.crop if face.crop.shape[1::-1] == size else cv2.resize(face.crop, size,
                                                                                 interpolation=cv2.INTER_AREA)
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

    def infer(self, blob: np.ndarray) -> np.ndarray:
        """One ONNX run (tests count these)."""
        out = self.session.run([self.output_name], {self.input_name: blob})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(blob), -1)

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Output rows for prepared crops, in batches of at most `batch`."""
        rows = [self.infer(self.blob(crops[i:i + self.batch])) for i in range(0, len(crops), self.batch)]
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

    def summary(self, attributes: dict[str, Any]) -> str | None:
        """A short text of this head's answer for the HTML page, e.g. 'happy 0.98' or 'F, 31'."""
        spec = self.spec
        if spec.output is OutputKind.GENDERAGE:
            return f"{attributes['gender']}, {attributes['age']}" if "age" in attributes else None
        value = attributes.get(spec.name)
        if value is None:
            return None
        if spec.output is OutputKind.SOFTMAX:
            return f"{value['label']} {value['scores'][value['label']]:.2f}"
        if isinstance(value, dict):
            return f"{spec.name}: " + ", ".join(f"{k} {v:.3g}" for k, v in value.items())
        return f"{spec.name}: {value:.3g}"


def run_heads(heads: Sequence[Head], images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
    """Each head once over every face of the call (one batch, chunked by its batch size); results go to
    `Face.attributes`. `faces[i]` are the faces found in `images[i]`, in that image's pixels."""
    for head in heads:
        flat = [(image, face) for image, row in zip(images, faces, strict=True) for face in row]
        if not flat:
            return
        rows = head.predict([head.prepare(image, face) for image, face in flat])
        for (_, face), row in zip(flat, rows, strict=True):
            face.attributes.update(head.decode(row))


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True, slots=True)
class HeadListing:
    """A head as GET /api/heads shows it: loaded, or known but unavailable (and why)."""

    spec: HeadSpec
    origin: str
    head: Head | None = None
    reason: str | None = None
    default: bool = False

    @property
    def available(self) -> bool:
        return self.head is not None


def parse_names(names: str) -> list[str]:
    """'emotion, genderage' -> ['emotion', 'genderage'] (order kept, repeats dropped)."""
    out: list[str] = []
    for part in names.split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


class HeadRegistry:
    def __init__(self, listings: Iterable[HeadListing] = ()) -> None:
        self._listings = {entry.spec.name: entry for entry in listings}

    @classmethod
    def load(cls, *, defaults: str, heads_dir: Path | None, genderage: Path | None, pack_name: str,
             providers: list[str], threads: int, batch: int) -> HeadRegistry:
        """Built-in heads, then HEADS_DIR (a user head of the same name replaces a built-in one). Any bad spec
        or model is a ModelPackError naming the file; an absent genderage.onnx only marks genderage
        unavailable."""
        def load_head(spec: HeadSpec, path: Path, origin: str) -> Head:
            return Head(spec, path, providers=providers, threads=threads, batch=batch, origin=origin)

        found: dict[str, tuple[HeadSpec, Path, str]] = {}
        emotion = read_spec(ASSETS_DIR / "emotion.json")
        found[emotion.name] = (emotion, ASSETS_DIR / (emotion.model or "emotion.onnx"), "built-in")
        unavailable: dict[str, HeadListing] = {}
        if genderage is not None:
            found[GENDERAGE] = (genderage_spec(_static_size(genderage)), genderage, f"model pack {pack_name}")
        else:
            unavailable[GENDERAGE] = HeadListing(
                spec=genderage_spec(), origin=f"model pack {pack_name}",
                reason=f"model pack '{pack_name}' has no genderage.onnx (antelopev2 and buffalo_l have it)")
        if heads_dir is not None:
            user: dict[str, Path] = {}
            for spec, path in _user_specs(heads_dir):
                if spec.name in user:
                    raise ModelPackError(f"head spec {path}: head name {spec.name!r} is already used by "
                                         f"{user[spec.name]}")
                if spec.name in found or spec.name in unavailable:
                    logger.warning("head %s from %s replaces the built-in head of that name", spec.name, path)
                user[spec.name] = path
                unavailable.pop(spec.name, None)
                found[spec.name] = (spec, heads_dir / (spec.model or path.with_suffix(".onnx").name), str(path))

        listings = [HeadListing(spec=spec, origin=origin, head=load_head(spec, model, origin))
                    for spec, model, origin in found.values()]
        _check_keys(listings)
        registry = cls([*listings, *unavailable.values()])
        registry._set_defaults(defaults)
        for entry in registry._listings.values():
            if entry.head is not None:
                logger.info("head %s loaded from %s (%s, %d parameters)%s", entry.spec.name, entry.head.path,
                            entry.origin, entry.head.info.parameters, " [default]" if entry.default else "")
        return registry

    def _set_defaults(self, defaults: str) -> None:
        chosen = []
        for name in parse_names(defaults):
            entry = self._listings.get(name)
            if entry is None:
                raise ModelPackError(f"HEADS names an unknown head {name!r}; known heads: {self._known()}")
            if entry.head is None:
                logger.warning("HEADS names %s, which is unavailable (%s): not run by default", name, entry.reason)
                continue
            chosen.append(name)
        for name, entry in self._listings.items():
            self._listings[name] = replace(entry, default=name in chosen)

    def _known(self) -> str:
        return ", ".join(self._listings) or "none"

    def available(self) -> list[str]:
        return [name for name, entry in self._listings.items() if entry.head is not None]

    def listings(self) -> list[HeadListing]:
        return list(self._listings.values())

    def listing(self, name: str) -> HeadListing:
        entry = self._listings.get(name)
        if entry is None:
            raise NoSuchHead(f"unknown head {name!r}; heads: {self._known()}")
        return entry

    def select(self, names: str | None) -> list[Head]:
        """Heads by comma-separated names; None means the default heads (HEADS), '' means none."""
        if names is None:
            return [e.head for e in self._listings.values() if e.default and e.head is not None]
        heads = []
        for name in parse_names(names):
            entry = self._listings.get(name)
            available = ", ".join(self.available()) or "none"
            if entry is None:
                raise NoSuchHead(f"unknown head {name!r}; available heads: {available}")
            if entry.head is None:
                raise NoSuchHead(f"head {name!r} is unavailable: {entry.reason}; available heads: {available}")
            heads.append(entry.head)
        return heads


def _static_size(path: Path) -> tuple[int, int]:
    """A genderage model's (width, height) as it declares it (InsightFace's are 96x96)."""
    try:
        dims = _dims(onnx.load(str(path), load_external_data=False).graph.input[0])
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelPackError(f"head 'genderage' ({path}): not a readable ONNX model: {exc}") from exc
    if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int):
        return dims[3], dims[2]
    return 96, 96


def _user_specs(heads_dir: Path) -> list[tuple[HeadSpec, Path]]:
    if not heads_dir.is_dir():
        raise ModelPackError(f"HEADS_DIR {heads_dir} is not a folder")
    specs = [(read_spec(p), p) for p in sorted(heads_dir.iterdir()) if p.suffix.lower() in SPEC_SUFFIXES]
    used = {(s.model or p.with_suffix(".onnx").name) for s, p in specs}
    for orphan in sorted(p.name for p in heads_dir.glob("*.onnx") if p.name not in used):
        logger.warning("HEADS_DIR %s: %s has no spec naming it; ignored (add a .json spec)", heads_dir, orphan)
    return specs


def _check_keys(listings: Sequence[HeadListing]) -> None:
    owner: dict[str, str] = {}
    for entry in listings:
        for key in entry.spec.output_keys:
            if key in owner:
                raise ModelPackError(f"head {entry.spec.name!r} ({entry.origin}) and head {owner[key]!r} both "
                                     f"answer {key!r}; rename one or remove it")
            owner[key] = entry.spec.name
