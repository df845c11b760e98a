"""The face models: ONNX sessions and the inference gate (runtime), the
ONNX model base (model: batch sizes, padding, warm-up), model packs, SCRFD detection, alignment,
ArcFace embedding, the FaceEngine that runs them over batches of images, and the request batcher in front of
it. Knows nothing of HTTP, storage or what a classifier head is (heads reach it as app.faces.FaceHead)."""

from app.engine.batcher import InferenceBatcher, Ticket, busy_error, refused_at_door
from app.engine.engine import FaceEngine, Image
from app.engine.model import Chunk, OnnxModel, Shape
from app.engine.observe import CallSource, Dropped, EngineObserver, NullObserver, Shed
from app.engine.packs import BUNDLED_PACK, PRODUCTION_PACK, ModelPack, bundled_model_dir, resolve_pack
from app.engine.runtime import InferenceGate, Runtime, select_providers

__all__ = [
    "BUNDLED_PACK",
    "PRODUCTION_PACK",
    "CallSource",
    "Chunk",
    "Dropped",
    "EngineObserver",
    "FaceEngine",
    "Image",
    "InferenceBatcher",
    "InferenceGate",
    "ModelPack",
    "NullObserver",
    "OnnxModel",
    "Runtime",
    "Shape",
    "Shed",
    "bundled_model_dir",
    "resolve_pack",
    "select_providers",
    "Ticket",
    "busy_error",
    "refused_at_door",
]
