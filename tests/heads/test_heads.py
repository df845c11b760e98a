"""Classifier heads: the real emotion model on real photos, head specs from HEADS_DIR, genderage through a stand-in
model, and the HTTP routes (/api/analyze, /api/heads, /api/search?heads=, the HTML page)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.api.pages import head_summary
from app.bootstrap import load_models
from app.config import Settings
from app.engine import FaceEngine, InferenceGate, Runtime
from app.errors import ModelPackError, NoSuchHead
from app.heads import ASSETS_DIR, Head, HeadRegistry, box_crop, read_spec
from tests.support import VECTRON_DIR, Photos, read_bgr

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _skimage_photo(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")  # a dependency of insightface; its wheel ships sample photos
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


ASTRONAUT = _skimage_photo("astronaut.png")  # Eileen Collins, smiling broadly


def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "application/octet-stream")}


def count_runs(head: Head, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the head's one ONNX entry point; returns the faces of every run."""
    sizes: list[int] = []
    real = head.infer

    def counting(blob: np.ndarray, size: int | None = None) -> np.ndarray:
        sizes.append(len(blob))
        return real(blob, size)

    monkeypatch.setattr(head, "infer", counting)
    return sizes


# ------------------------------------------------------------------------------------------ stand-in models
def save_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def brightness_model(path: Path, size: int = 32, batch: int | str = "N") -> Path:
    """A genuine one-op head: the mean of a grey N x 1 x size x size input -> N x 1."""
    return save_model(
        path,
        [
            helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["y", "axis"], ["out"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )


def genderage_standin(path: Path) -> Path:
    """Stands in for InsightFace's genderage.onnx, which is not available here: the same interface (input
    N x 3 x 96 x 96, output N x 3 = [female, male, age / 100]) with fixed weights: female = mean of input channel
    0 (R once the head has swapped BGR to RGB), male = mean of channel 2 (B), age = 0.31."""
    weights = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]], np.float32)  # channel means (3) -> outputs (3)
    return save_model(
        path,
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("Gemm", ["m", "w", "b"], ["out"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 96, 96])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [3, 3], weights.flatten().tolist()),
            helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 0.0, 0.31]),
        ],
    )


def genderage_pack(root: Path) -> Path:
    """A model pack folder with the bundled detector and recognizer and the stand-in genderage.onnx."""
    pack = root / "buffalo_test"
    pack.mkdir(parents=True)
    os.symlink(VECTRON_DIR / "scrfd_500m_bnkps.onnx", pack / "det_500m.onnx")
    os.symlink(VECTRON_DIR / "w600k_mbf.onnx", pack / "w600k_mbf.onnx")
    genderage_standin(pack / "genderage.onnx")
    return root


def write_spec(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(spec))
    return path


BRIGHTNESS = {
    "name": "brightness",
    "model": "brightness.onnx",
    "input_size": [32, 32],
    "color": "gray",
    "normalize": {"mean": 0.0, "std": 255.0},
    "crop": "aligned",
    "output": "regression",
    "description": "mean grey level of the aligned crop, 0..1",
}


def heads_named(text: str) -> set[str]:
    """The head names a message mentions (as words): the registry's, and the unknown one asked for."""
    return {name for name in ("emotion", "genderage", "smile") if re.search(rf"\b{name}\b", text)}


def registry(**overrides: Any) -> HeadRegistry:
    args: dict[str, Any] = {
        "defaults": "emotion",
        "heads_dir": None,
        "genderage": None,
        "pack_name": "bundled",
        "runtime": Runtime(threads=1),
        "batch_sizes": (1, 4, 16),
    }
    args.update(overrides)
    return HeadRegistry.load(**args)


# ------------------------------------------------------------------------------------------ emotion, engine level
def test_emotion_is_a_distribution_over_seven_labels(
    engine: FaceEngine, heads: HeadRegistry, photos: type[Photos]
) -> None:
    chosen = heads.select("emotion")
    faces = engine.analyze_batch([read_bgr(photos.t1), read_bgr(photos.tom_hanks)], heads=chosen)
    flat = [f for row in faces for f in row]
    assert len(flat) == 7
    for face in flat:
        emotion = face.attributes["emotion"]
        scores = emotion["scores"]
        assert list(scores) == EMOTIONS
        assert all(0.0 <= p <= 1.0 for p in scores.values())
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert emotion["label"] == max(scores, key=scores.get)
        assert face.embedding.shape == (512,)  # heads ride along; search is unchanged


def test_smiling_astronaut_is_happy(engine: FaceEngine, heads: HeadRegistry) -> None:
    (face,) = engine.analyze_batch([read_bgr(ASTRONAUT)], heads=heads.select("emotion"))[0]
    assert face.attributes["emotion"]["label"] == "happy"
    assert face.attributes["emotion"]["scores"]["happy"] > 0.9


def test_heads_run_once_per_face_in_one_batch(
    engine: FaceEngine, heads: HeadRegistry, photos: type[Photos], monkeypatch: pytest.MonkeyPatch
) -> None:
    (head,) = heads.select("emotion")
    sizes = count_runs(head, monkeypatch)
    images = [read_bgr(p) for p in (photos.t1, photos.yaoming, photos.tom_hanks)]
    faces = engine.analyze_batch(images, heads=[head])
    # every face of the call in as few runs as the head's batch sizes allow (one run on a GPU: padded)
    assert sum(len(row) for row in faces) == 8 and sizes == [c.rows for c in head.chunks(8)]
    assert all("emotion" in f.attributes for row in faces for f in row)
    engine.analyze_batch(images)  # no heads asked: no head runs
    assert sum(sizes) == 8


def test_head_batches_agree_with_single_runs(engine: FaceEngine, heads: HeadRegistry, photos: type[Photos]) -> None:
    (head,) = heads.select("emotion")
    image = read_bgr(photos.t1)
    together = engine.analyze_batch([image], heads=[head])[0]
    alone = [head.predict([head.prepare(image, f)])[0] for f in together]
    for face, row in zip(together, alone, strict=True):
        got = np.array(list(face.attributes["emotion"]["scores"].values()))
        np.testing.assert_allclose(got, row, atol=1e-5)


def test_box_crop_frames_the_square_around_the_box() -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:150, 100:200] = 255  # a white square where the "face" is
    crop = box_crop(image, np.array([100, 60, 200, 140], np.float32), (64, 64), margin=0.0)
    assert crop.shape == (64, 64, 3) and crop.min() == 255  # side max(w, h) = 100 around the centre
    wide = box_crop(image, np.array([100, 60, 200, 140], np.float32), (64, 64), margin=0.5)
    assert wide[32, 32].min() == 255 and wide[2, 2].max() == 0  # twice the side: background at the corners
    edge = box_crop(image, np.array([-20, -20, 40, 40], np.float32), (32, 32), margin=0.0)
    assert edge.shape == (32, 32, 3)  # past the image edge: edge pixels repeat, no error


def test_emotion_on_eval_photos_is_mostly_happy_or_neutral(
    engine: FaceEngine, heads: HeadRegistry, eval_dir: Path
) -> None:
    """Red-carpet photos: fer labels 61 of its 67 matched faces happy or neutral; ours must broadly agree."""
    images = [read_bgr(eval_dir / f"img{i}.jpg") for i in (1, 2, 15, 17, 23, 24, 25, 28)]  # fer: happy >= 0.94
    faces = engine.analyze_batch(images, heads=heads.select("emotion"))
    labels = [max(row, key=lambda f: f.det_score).attributes["emotion"]["label"] for row in faces]
    assert labels.count("happy") >= 7, labels


# ------------------------------------------------------------------------------------------ registry and specs
def test_bundled_pack_lists_genderage_as_unavailable() -> None:
    reg = registry()
    entry = reg.listing("genderage")
    assert not entry.available and "genderage.onnx" in (entry.reason or "")
    assert reg.available() == ["emotion"] and [h.name for h in reg.select(None)] == ["emotion"]
    with pytest.raises(NoSuchHead) as unavailable:
        reg.select("genderage")
    message = unavailable.value.message
    assert heads_named(message) == {"genderage", "emotion"} and "unavailable" in message
    assert "genderage.onnx" in message  # why
    with pytest.raises(NoSuchHead) as unknown:
        reg.select("emotion,smile")
    assert heads_named(unknown.value.message) == {"smile", "emotion"}
    assert reg.select("") == [] and [h.name for h in reg.select(" emotion , emotion")] == ["emotion"]


def test_unavailable_default_head_is_not_an_error() -> None:
    reg = registry(defaults="emotion,genderage")
    assert [h.name for h in reg.select(None)] == ["emotion"]
    with pytest.raises(ModelPackError, match="HEADS names an unknown head 'smile'"):
        registry(defaults="smile")


def test_genderage_with_a_pack_that_has_it(tmp_path: Path, photos: type[Photos]) -> None:
    root = genderage_pack(tmp_path / "models")
    engine, heads = load_models(Settings(model_root=root, model_name="buffalo_test"), InferenceGate(1, 5.0))
    entry = heads.listing("genderage")
    assert entry.available and entry.origin == "model pack buffalo_test" and entry.spec.input_size == (96, 96)
    image = read_bgr(photos.yaoming)
    reds, blues = image.copy(), image.copy()
    reds[..., 2], blues[..., 0] = 255, 255  # BGR: a red tint, a blue tint
    chosen = heads.select("emotion,genderage")
    faces = engine.analyze_batch([reds, blues], heads=chosen)
    (red,), (blue,) = faces
    # The stand-in says female when input channel 0 (R after BGR->RGB) is brighter than channel 2 (B).
    assert (red.attributes["gender"], blue.attributes["gender"]) == ("F", "M")
    assert red.attributes["age"] == 31 and isinstance(red.attributes["age"], int)
    assert set(red.attributes) == {"emotion", "gender", "age"}


def test_custom_head_from_heads_dir(tmp_path: Path, engine: FaceEngine, photos: type[Photos]) -> None:
    brightness_model(tmp_path / "brightness.onnx")
    write_spec(tmp_path, "brightness.json", BRIGHTNESS)
    reg = registry(heads_dir=tmp_path)
    assert reg.available() == ["emotion", "brightness"]
    head = reg.select("brightness")[0]
    assert head.info.input_shape == ["N", 1, 32, 32] and head.info.parameters == 1
    image = read_bgr(photos.yaoming)
    (face,) = engine.analyze_batch([image], heads=[head])[0]
    assert face.crop is not None
    expected = cv2.cvtColor(cv2.resize(face.crop, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    assert face.attributes["brightness"] == pytest.approx(expected.mean() / 255.0, abs=1e-5)
    assert head_summary(head, face.attributes) == f"brightness: {face.attributes['brightness']:.3g}"


def test_head_whose_batch_axis_is_pinned_to_one(
    tmp_path: Path, engine: FaceEngine, heads: HeadRegistry, photos: type[Photos], monkeypatch: pytest.MonkeyPatch
) -> None:
    brightness_model(tmp_path / "brightness.onnx", batch=1)  # exports often pin it; the head then runs per face
    write_spec(tmp_path, "brightness.json", BRIGHTNESS)
    head = registry(heads_dir=tmp_path).select("brightness")[0]
    assert head.batch_sizes == (1,)
    sizes = count_runs(head, monkeypatch)
    faces = engine.analyze_batch([read_bgr(photos.t1)], heads=[head])[0]
    assert sizes == [1] * 6 and all(0 < f.attributes["brightness"] < 1 for f in faces)
    assert heads.select("emotion")[0].max_batch > 1  # the shipped model takes whole batches


def test_custom_head_yaml_spec(tmp_path: Path) -> None:
    brightness_model(tmp_path / "brightness.onnx")
    lines = [f"{k}: {json.dumps(v)}" for k, v in BRIGHTNESS.items()]  # JSON values are valid YAML
    (tmp_path / "brightness.yaml").write_text("\n".join(lines) + "\n")
    if importlib.util.find_spec("yaml") is None:
        with pytest.raises(ModelPackError, match=r"brightness\.yaml: YAML specs need PyYAML"):
            registry(heads_dir=tmp_path)
    else:
        assert "brightness" in registry(heads_dir=tmp_path).available()


def test_user_head_replaces_a_built_in_one(tmp_path: Path) -> None:
    brightness_model(tmp_path / "mine.onnx", size=64)
    spec = {**BRIGHTNESS, "name": "emotion", "model": "mine.onnx", "input_size": [64, 64]}
    write_spec(tmp_path, "emotion.json", spec)
    entry = registry(heads_dir=tmp_path).listing("emotion")
    assert entry.origin.endswith("emotion.json") and entry.spec.output == "regression"


def test_shipped_emotion_spec_is_valid() -> None:
    spec = read_spec(ASSETS_DIR / "emotion.json")
    assert list(spec.labels) == EMOTIONS and spec.crop == "box" and spec.layout == "NHWC" and spec.color == "gray"
    assert "89.6%" in spec.description  # the measured agreement with fer is recorded with the model


@pytest.mark.parametrize(
    ("change", "files", "problem"),
    [
        ({"labels": ["a", "b", "c"]}, {}, "trial run on a blank input failed|answers shape"),
        ({"input_size": [48, 48]}, {}, r"model input is \['N', 1, 32, 32\], but the spec"),
        ({"color": "rgb"}, {}, r"model input is \['N', 1, 32, 32\]"),
        ({"colour": "gray"}, {}, "unknown key 'colour'"),
        ({"output": "probabilities"}, {}, "output: Input should be 'softmax', 'regression' or 'genderage'"),
        ({"crop": "box", "margin": -1}, {}, "margin: Input should be greater than or equal to 0"),
        ({"model": "../brightness.onnx"}, {}, "model must be a file name"),
        ({"model": "missing.onnx"}, {}, "model file not found"),
        ({"model": "garbage.onnx"}, {"garbage.onnx": b"not a protobuf at all"}, "not a readable ONNX model"),
        ({"name": "Bad Name"}, {}, "name: String should match pattern"),
        ({"name": "bbox"}, {}, "reserved for a face field"),
        ({"output": "softmax", "labels": ["x"]}, {}, "softmax head needs at least 2 labels"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_broken_head_spec_or_model_stops_loading(
    tmp_path: Path, change: dict[str, Any], files: dict[str, bytes], problem: str
) -> None:
    brightness_model(tmp_path / "brightness.onnx")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_spec(tmp_path, "brightness.json", {**BRIGHTNESS, **change})
    with pytest.raises(ModelPackError, match=problem) as info:
        registry(heads_dir=tmp_path)
    assert "brightness" in info.value.message  # the message names the file (or the head)


def test_spec_that_is_not_json_or_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{name: emotion")
    with pytest.raises(ModelPackError, match=r"a\.json: invalid JSON"):
        registry(heads_dir=tmp_path)
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(ModelPackError, match=r"a\.json: expected a mapping"):
        registry(heads_dir=tmp_path)
    with pytest.raises(ModelPackError, match="is not a folder"):
        registry(heads_dir=tmp_path / "nowhere")


def test_two_heads_answering_the_same_key(tmp_path: Path) -> None:
    genderage_standin(tmp_path / "ga.onnx")
    spec = {
        "name": "other_ga",
        "model": "ga.onnx",
        "input_size": [96, 96],
        "crop": "box",
        "margin": 0.25,
        "output": "genderage",
    }
    write_spec(tmp_path, "ga.json", spec)
    assert registry(heads_dir=tmp_path).available() == ["emotion", "other_ga"]  # alone it is fine
    with pytest.raises(ModelPackError, match="both answer 'gender'"):
        registry(heads_dir=tmp_path, genderage=genderage_standin(tmp_path / "genderage.onnx"))


# ------------------------------------------------------------------------------------------ HTTP
def test_analyze_route(client: TestClient, photos: type[Photos]) -> None:
    r = client.post("/api/analyze", files=upload(ASTRONAUT))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["heads"] == ["emotion"] and body["model"] == "bundled"
    (face,) = body["faces"]
    assert len(face["bbox"]) == 4 and len(face["kps"]) == 5 and 0.5 < face["det_score"] <= 1
    assert face["emotion"]["label"] == "happy" and list(face["emotion"]["scores"]) == EMOTIONS
    # heads named as a form field or a query parameter; empty runs none
    t1 = client.post("/api/analyze", files=upload(photos.t1), data={"heads": "emotion"}).json()
    assert len(t1["faces"]) == 6 and all("emotion" in f for f in t1["faces"])
    bare = client.post("/api/analyze", files=upload(photos.t1), params={"heads": ""}).json()
    assert bare["heads"] == [] and set(bare["faces"][0]) == {"bbox", "det_score", "kps", "quality"}
    assert client.get("/status").json()["vectors"] == 0  # analyze stores nothing


def test_unknown_or_unavailable_head_is_400_naming_the_available_heads(
    client: TestClient, photos: type[Photos]
) -> None:
    # What the message must convey, not its wording: the head asked for, why it cannot run, and the heads that
    # can (emotion; genderage is listed by the registry but unavailable with the bundled pack).
    r = client.post("/api/analyze", files=upload(photos.yaoming), params={"heads": "emotion,smile"})
    assert r.status_code == 400 and r.json()["error"] == "no_such_head"
    detail = r.json()["detail"]
    assert heads_named(detail) == {"smile", "emotion"} and "unavailable" not in detail.lower()
    r = client.post("/api/search", files=upload(photos.yaoming), params={"heads": "genderage"})
    assert r.status_code == 400 and r.json()["error"] == "no_such_head"
    detail = r.json()["detail"]
    assert heads_named(detail) == {"genderage", "emotion"} and "unavailable" in detail.lower()
    assert "genderage.onnx" in detail and "bundled" in detail  # why: the bundled pack lacks that model file
    r = client.post(
        "/api/analyze", files=upload(photos.yaoming), params={"heads": "emotion"}, data={"heads": "genderage"}
    )
    assert r.status_code == 400 and "not both" in r.json()["detail"]


def test_search_with_heads(client: TestClient, photos: type[Photos]) -> None:
    client.post("/api/faces", files=upload(photos.players))
    plain = client.post("/api/search", files=upload(photos.yaoming)).json()["faces"][0]
    assert "emotion" not in plain  # no heads unless asked
    face = client.post("/api/search", files=upload(photos.yaoming), params={"heads": "emotion"}).json()["faces"][0]
    assert face["matches"][0]["file"] == "players.jpg" and face["emotion"]["label"] in EMOTIONS
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (photos.yaoming, photos.t1)]
    batch = client.post("/api/search/batch", files=files, params={"heads": "emotion"}).json()["results"]
    assert [all("emotion" in f for f in item["faces"]) for item in batch] == [True, True]


def test_heads_listing_and_detail(client: TestClient) -> None:
    listing = client.get("/api/heads").json()
    assert listing["default"] == ["emotion"]
    by_name = {h["name"]: h for h in listing["heads"]}
    assert by_name["emotion"]["available"] and by_name["emotion"]["spec"]["labels"] == EMOTIONS
    assert by_name["emotion"]["spec"]["crop"] == "box" and by_name["emotion"]["output_keys"] == ["emotion"]
    assert not by_name["genderage"]["available"] and "genderage.onnx" in by_name["genderage"]["reason"]
    detail = client.get("/api/heads/emotion").json()
    assert detail["labels"] == EMOTIONS
    info = detail["model_info"]
    assert info["input_shape"] == ["batch", 64, 64, 1] and info["parameters"] == 57661
    assert info["output_shape"] == ["batch", 7] and info["providers"] == ["CPUExecutionProvider"]
    genderage = client.get("/api/heads/genderage").json()
    assert genderage["model_info"] is None and genderage["labels"] == ["F", "M"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/analyze", "/api/heads", "/api/heads/{name}"} <= set(paths)
    missing = client.get("/api/heads/smile")
    assert missing.status_code == 404 and "emotion, genderage" in missing.json()["detail"]


def test_html_page_shows_each_face_emotion(client: TestClient, photos: type[Photos]) -> None:
    client.post("/api/faces", files=upload(photos.players))
    html = client.post("/search", files=upload(ASTRONAUT))
    assert html.status_code == 200 and '<figcaption class="head">happy 1.00</figcaption>' in html.text


def test_custom_head_over_http_and_broken_spec_stops_start_up(
    client_factory: Callable[..., TestClient], tmp_path: Path, photos: type[Photos]
) -> None:
    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    brightness_model(heads_dir / "brightness.onnx")
    write_spec(heads_dir, "brightness.json", BRIGHTNESS)
    client = client_factory(heads_dir=heads_dir, heads="emotion,brightness")
    face = client.post("/api/analyze", files=upload(photos.yaoming)).json()["faces"][0]
    assert 0.0 < face["brightness"] < 1.0 and "emotion" in face
    client.__exit__(None, None, None)
    write_spec(heads_dir, "brightness.json", {**BRIGHTNESS, "input_size": [48, 48]})
    with pytest.raises(ModelPackError, match=r"head 'brightness' \(.*brightness\.onnx\): the model input is"):
        client_factory(heads_dir=heads_dir)


def test_genderage_over_http(client_factory: Callable[..., TestClient], tmp_path: Path, photos: type[Photos]) -> None:
    """Through the API, each answer the one the stand-in must give (InsightFace's genderage.onnx is not available
    here, so no real photo has a gender the model is known to give): female for a red tint, male for a blue one."""
    client = client_factory(model_root=genderage_pack(tmp_path / "models"), model_name="buffalo_test")
    assert client.get("/api/heads/genderage").json()["available"] is True
    image = read_bgr(photos.yaoming)
    reds, blues = image.copy(), image.copy()
    reds[..., 2], blues[..., 0] = 255, 255  # BGR: a red tint, a blue tint
    answers = []
    for tinted in (reds, blues):
        jpeg = cv2.imencode(".jpg", tinted)[1].tobytes()
        r = client.post(
            "/api/analyze", files={"file": ("t.jpg", jpeg, "image/jpeg")}, params={"heads": "emotion,genderage"}
        )
        (face,) = r.json()["faces"]
        assert face["age"] == 31 and face["emotion"]["label"] in EMOTIONS
        answers.append(face["gender"])
    assert answers == ["F", "M"]
