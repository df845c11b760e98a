"""The image-input rewrite (app.engine.graph): uint8 BGR NHWC in, the same outputs as the float blob OpenCV builds."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.engine.detector import ScrfdDetector
from app.engine.graph import IMAGE_INPUT, with_image_input
from app.engine.runtime import Runtime
from tests.support import VECTRON_DIR, read_bgr


@pytest.mark.parametrize(
    ("model", "size", "mean", "std"),
    [("scrfd_500m_bnkps.onnx", 320, 127.5, 128.0), ("w600k_mbf.onnx", 112, 127.5, 127.5)],
)
def test_image_input_gives_the_blob_outputs(photos, model: str, size: int, mean: float, std: float) -> None:  # type: ignore[no-untyped-def]
    path = VECTRON_DIR / model
    pictures = [cv2.resize(read_bgr(p), (size, size)) for p in (photos.t1, photos.yaoming)]
    blob = cv2.dnn.blobFromImages(pictures, 1.0 / std, (size, size), (mean,) * 3, swapRB=True)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapped_model = with_image_input(onnx.load(str(path)), mean=mean, std=std)
    wrapped = ort.InferenceSession(wrapped_model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in wrapped.get_inputs()] == [IMAGE_INPUT]
    assert wrapped.get_inputs()[0].type == "tensor(uint8)"
    expected = plain.run(None, {plain.get_inputs()[0].name: blob})
    got = wrapped.run(None, {IMAGE_INPUT: np.stack(pictures)})
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_model_with_two_inputs_is_refused() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    out = onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "y"], ["z"])], "two", [x, y], [out])
    with pytest.raises(ValueError, match="one input"):
        with_image_input(onnx.helper.make_model(graph), mean=0.0, std=1.0)


def test_a_detector_given_image_input_finds_the_same_faces_and_warms_uint8_shapes(photos) -> None:  # type: ignore[no-untyped-def]
    """Runtime.image_input is what a GPU runtime sets (GPU_IMAGE_INPUT); the graph runs the same on the CPU."""
    path = VECTRON_DIR / "scrfd_500m_bnkps.onnx"
    common = {"det_size": (640, 640), "threshold": 0.5, "batch_sizes": (1, 2)}
    plain = ScrfdDetector(path, runtime=Runtime(threads=1), **common)  # type: ignore[arg-type]
    pixels = ScrfdDetector(path, runtime=Runtime(threads=1, image_input=True), **common)  # type: ignore[arg-type]
    assert pixels.input_name == IMAGE_INPUT and plain.input_name != IMAGE_INPUT
    shapes = pixels.input_shapes()
    assert all(s[-1] == 3 for s in shapes) and (2, 640, 640, 3) in shapes
    pixels.warm_up()
    assert set(pixels.timings) == set(shapes)  # the warm-up ran uint8 NHWC blanks at exactly those shapes
    images = [read_bgr(photos.t1), read_bgr(photos.yaoming)]
    for ours, theirs in zip(pixels.detect(images), plain.detect(images), strict=True):
        assert len(ours[0]) == len(theirs[0]) > 0
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-2)
        np.testing.assert_allclose(ours[2], theirs[2], atol=1e-2)
