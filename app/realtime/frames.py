"""One frame through FaceService: decode, detect, heads (and, when asked, embed + search), crowd analysis; and the
emotion service's `predict` (the largest face's emotion) with its model description. Blocking: the WebSocket
layer runs these in its thread pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine import Ticket
from app.errors import NoSuchHead
from app.faces import FaceQuality
from app.heads import Head, OutputKind
from app.realtime.crowd import CrowdAnalysis, CrowdScale
from app.service import FaceServiceApi, SearchedFace
from app.store import Match

EMOTION_HEAD = "emotion"

# Short descriptions of the FER2013 classes, for the emotion service's `emotions` answer.
EMOTION_DESCRIPTIONS = {
    "angry": "frowning, lowered brows, tight lips",
    "disgust": "wrinkled nose, raised upper lip",
    "fear": "raised brows, widened eyes, stretched mouth",
    "happy": "smiling, raised cheeks",
    "sad": "drooping mouth corners, raised inner brows",
    "surprise": "raised brows, wide-open eyes, open mouth",
    "neutral": "no marked expression",
}
# The emotion service's class ids: from 1, in this order (its clients keep predictions by them). The head's own
# label order (app/assets/heads/emotion.json) is fer's, and no concern of theirs.
EMOTION_SERVICE_IDS = {"angry": 1, "disgust": 2, "fear": 3, "happy": 4, "neutral": 5, "sad": 6, "surprise": 7}


def emotion_ids(labels: Sequence[str]) -> dict[str, int]:
    """Each label's id in the emotion service's numbering; a label it did not have (a HEADS_DIR emotion head with
    other classes) gets the next free id, in the head's order."""
    ids: dict[str, int] = {}
    next_id = max(EMOTION_SERVICE_IDS.values()) + 1
    for label in labels:
        if label in EMOTION_SERVICE_IDS:
            ids[label] = EMOTION_SERVICE_IDS[label]
        else:
            ids[label], next_id = next_id, next_id + 1
    return ids


@dataclass(frozen=True, slots=True)
class FrameOptions:
    """A frame's settings, validated by the caller. `heads`: comma-separated names, None for the default heads
    (HEADS), '' for none. `top_k`/`threshold` apply when `search` is set; `confidence_threshold` keeps only
    faces the detector scored at least that (on top of DET_THRESHOLD)."""

    confidence_threshold: float = 0.0
    crowd_threshold: int = 10
    search: bool = False
    top_k: int = 1
    threshold: float | None = None
    heads: str | None = None
    max_side: int | None = None  # the frame is reduced to this long side before detection (None: as decoded)
    min_quality: float | None = None  # with `search`: match only stored faces of at least this quality score


@dataclass(slots=True)
class FrameFace:
    bbox: list[float]  # x1, y1, x2, y2 in the frame's pixels
    confidence: float  # the detector's score
    kps: list[list[float]]
    attributes: dict[str, Any]  # each head's answer, e.g. {"emotion": {"label", "scores"}}
    matches: list[Match] | None = None  # with `search` only: nearest stored faces, best first
    searched: SearchedFace | None = None  # with `search` only: the service's answer (app.people's says who it is)
    quality: FaceQuality | None = None  # app.engine.quality's record

    @property
    def area(self) -> float:
        return max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1])


@dataclass(slots=True)
class FrameResult:
    faces: list[FrameFace]
    crowd: CrowdAnalysis
    width: int  # the frame's size as sent (after EXIF rotation)
    height: int
    heads: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EmotionClass:
    id: int  # the emotion service's (EMOTION_SERVICE_IDS)
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class EmotionModel:
    """The emotion head as the emotion service's `model_info` and `emotions` describe it."""

    name: str
    available: bool
    reason: str | None
    classes: list[EmotionClass]
    input_shape: list[int | str]
    total_params: int
    version_tag: str  # head name and the first 12 hex digits of its ONNX file's sha256
    providers: list[str]


@dataclass(frozen=True, slots=True)
class Prediction:
    """The largest face's emotion. `faces`: how many faces the image has."""

    emotion_id: int  # the emotion service's (EMOTION_SERVICE_IDS)
    emotion_name: str
    confidence: float
    scores: dict[str, float]
    bbox: list[float]
    det_score: float
    faces: int


class FrameAnalyzer:
    def __init__(self, service: FaceServiceApi, scale: CrowdScale, *, predict_max_side: int | None = None) -> None:
        """`predict_max_side`: predict detects on the image reduced to this long side (PREDICT_MAX_SIDE)."""
        self.service = service
        self.scale = scale
        self.predict_max_side = predict_max_side

    def process(self, data: bytes, options: FrameOptions, ticket: Ticket | None = None) -> FrameResult:
        """Decode one frame and find its faces: heads always, embeddings and matches only with `search` (the
        recognizer is skipped otherwise). Domain errors (BadImage, ImageTooLarge, NoSuchHead, EngineBusy, ...)
        propagate."""
        service = self.service
        heads = service.select_heads(options.heads)
        if options.search:
            service.search_params(options.top_k, options.threshold, options.min_quality)  # a bad value costs no decode
        image = service.decode(data, max_side=options.max_side)
        faces: list[FrameFace]
        if options.search:
            searched = service.search(
                [image],
                top_k=options.top_k,
                threshold=options.threshold,
                heads=heads,
                ticket=ticket,
                min_quality=options.min_quality,
            )[0]
            faces = [
                FrameFace(f.bbox, round(f.face.det_score, 4), f.kps, f.face.attributes, f.matches, f, f.face.quality)
                for f in searched
            ]
        else:
            analyzed = service.analyze([image], heads=heads, ticket=ticket)[0]
            faces = [
                FrameFace(f.bbox, round(f.face.det_score, 4), f.kps, f.face.attributes, quality=f.face.quality)
                for f in analyzed
            ]
        faces = [f for f in faces if f.confidence >= options.confidence_threshold]
        width, height = image.original_size
        return FrameResult(
            faces=faces, crowd=self.scale.analyze(len(faces)), width=width, height=height, heads=[h.name for h in heads]
        )

    # ------------------------------------------------------------------ the emotion service
    def emotion_head(self) -> Head:
        """The emotion head; NoSuchHead when it is unavailable or (a HEADS_DIR head of that name) not a softmax
        classifier."""
        head = self.service.heads.select(EMOTION_HEAD)[0]
        if head.spec.output is not OutputKind.SOFTMAX:
            raise NoSuchHead(f"head {EMOTION_HEAD!r} is not a softmax classifier: predict needs one")
        return head

    def emotion_model(self) -> EmotionModel:
        try:
            entry = self.service.heads.listing(EMOTION_HEAD)
        except NoSuchHead as exc:
            return EmotionModel(EMOTION_HEAD, False, exc.message, [], [], 0, "", [])
        spec = entry.spec
        ids = emotion_ids(spec.labels)
        classes = [EmotionClass(ids[label], label, EMOTION_DESCRIPTIONS.get(label, "")) for label in spec.labels]
        classes.sort(key=lambda c: c.id)
        head = entry.head
        if head is None:
            return EmotionModel(spec.name, False, entry.reason, classes, [], 0, "", [])
        info = head.info
        return EmotionModel(
            spec.name,
            True,
            None,
            classes,
            info.input_shape,
            info.parameters,
            f"{spec.name}-{info.sha256[:12]}",
            info.providers,
        )

    def predict(self, data: bytes, ticket: Ticket | None = None) -> Prediction | None:
        """The emotion of the image's largest face (detector + emotion head only: no embedding, no search), on
        the image reduced to `predict_max_side`; None when the image has no face."""
        head = self.emotion_head()
        image = self.service.decode(data, max_side=self.predict_max_side)
        analyzed = self.service.analyze([image], heads=[head], ticket=ticket)[0]
        if not analyzed:
            return None
        faces = [FrameFace(f.bbox, round(f.face.det_score, 4), f.kps, f.face.attributes) for f in analyzed]
        main = max(faces, key=lambda f: f.area)
        answer = main.attributes[head.name]
        return Prediction(
            emotion_id=emotion_ids(head.spec.labels)[answer["label"]],
            emotion_name=answer["label"],
            confidence=float(answer["scores"][answer["label"]]),
            scores=answer["scores"],
            bbox=main.bbox,
            det_score=main.confidence,
            faces=len(faces),
        )
