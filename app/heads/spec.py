"""Head specs: what a head's spec file holds (input size, layout, colour, normalisation, crop, output kind),
validated strictly, and how spec files (JSON, or YAML with PyYAML) are read."""

from __future__ import annotations

import importlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import ModelPackError

GENDERAGE = "genderage"
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
# Fields a face already has; a head's output may not take them.
RESERVED_KEYS = frozenset({"bbox", "det_score", "kps", "matches", "embedding", "crop", "id", "heads", "quality"})
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
    margin: float = Field(
        default=0.0, ge=0.0, le=2.0, description="box crop only: fraction of the side added on each side"
    )
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
        name=GENDERAGE,
        input_size=input_size,
        layout=Layout.NCHW,
        color=ColorMode.RGB,
        normalize=Normalize(mean=0.0, std=1.0),
        crop=CropSource.BOX,
        margin=0.25,
        output=OutputKind.GENDERAGE,
        labels=("F", "M"),
        description="InsightFace gender and age (genderage.onnx of the model pack): "
        "gender = the larger of the [female, male] scores, age = round(100 * third output).",
        source="InsightFace model pack (antelopev2, buffalo_l, ...)",
    )


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
        raise ModelPackError(
            f"head spec {path}: YAML specs need PyYAML (pip install pyyaml), or write the spec as JSON"
        ) from exc
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
