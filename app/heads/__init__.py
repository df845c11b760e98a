"""Classifier heads: small ONNX models that run on the faces the engine has already detected and aligned.

A head is an ONNX model plus a spec (HeadSpec, spec.py): input size, layout, colour mode, normalisation, which
crop it reads (the 112x112 aligned crop, or a square box crop around the detector's box with a margin), and how
to read its output (softmax labels, regression values, or InsightFace's gender/age triple). The registry
(registry.py) holds the built-in heads and the user's heads from HEADS_DIR. The engine runs the selected heads
inside its inference gate, each once per call over every face (Head.run). Nothing here knows about HTTP.
"""

from app.heads.head import Head, ModelInfo, box_crop
from app.heads.registry import ASSETS_DIR, HeadListing, HeadRegistry, parse_names
from app.heads.spec import (
    GENDERAGE,
    ColorMode,
    CropSource,
    HeadSpec,
    Layout,
    Normalize,
    OutputKind,
    genderage_spec,
    read_spec,
)

__all__ = [
    "ASSETS_DIR",
    "GENDERAGE",
    "ColorMode",
    "CropSource",
    "Head",
    "HeadListing",
    "HeadRegistry",
    "HeadSpec",
    "Layout",
    "ModelInfo",
    "Normalize",
    "OutputKind",
    "box_crop",
    "genderage_spec",
    "parse_names",
    "read_spec",
]
