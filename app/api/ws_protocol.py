"""The /ws message shapes: parsing the two envelopes clients speak, frames (base64) and their settings, and the
answers. No I/O here (app.api.ws runs the socket).

Envelopes:
- events (the crowd backend's): `{"event": NAME, "data": {...}}`, answered `{"event": NAME, "data": {...}}`;
- commands (the emotion service's): `{"command": NAME, ...}`, answered `{"type": NAME, "status": ..., ...}`.

Errors are `{"event": "error", "data": {"code", "message", "details"}}`; an error answering a command also carries
the command's own keys (`type`, `status: "error"`, `error`), so that clients of either service understand it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.errors import ERROR_STATUS
from app.api.schemas import face_out, quality_out
from app.config import MAX_TOP_K, Settings
from app.errors import ImageTooLarge, OceanoError
from app.people import IdentifiedFace
from app.realtime import Alert, EmotionModel, FrameFace, FrameOptions, FrameResult, Prediction

SERVICE_NAME = "oceano"

# Domain error -> the `code` of its error event: the same short codes as the HTTP answers' `error` field, from the
# one table of app.api.errors (so a new domain error gets its code in both places at once).
WS_ERROR_CODES: dict[type[OceanoError], str] = {cls: code for cls, (_, code) in ERROR_STATUS.items()}


class CloseCode(IntEnum):
    """WebSocket close codes this service uses (RFC 6455 section 7.4)."""

    POLICY_VIOLATION = 1008  # not authorized, or no key in time
    MESSAGE_TOO_BIG = 1009  # a message over WS_MAX_MESSAGE_BYTES
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # shutting down
    TRY_AGAIN_LATER = 1013  # MAX_CONCURRENT_CONNECTIONS reached, or a waiting place (WS_AUTH_PENDING) given up


def error_code(exc: OceanoError) -> str:
    return WS_ERROR_CODES.get(type(exc), "internal")


class ProtocolError(Exception):
    """A message this socket cannot act on (bad JSON, unknown command, bad base64, missing frame, ...): answered
    with an error event; the socket stays open."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class Envelope(StrEnum):
    EVENT = "event"
    COMMAND = "command"


# Messages by envelope. process_frame and predict carry a frame (they queue for the engine); the others are
# answered at once, even while a frame is being processed.
EVENTS = ("process_frame", "ping", "get_stats")
COMMANDS = ("predict", "process_frame", "emotions", "model_info", "health", "stats", "ping", "auth")
FRAME_MESSAGES = frozenset({"process_frame", "predict"})
# The `type` of a command's answer, also used in its error answers.
REPLY_TYPES = {
    "predict": "prediction",
    "process_frame": "detection_result",
    "emotions": "emotions",
    "model_info": "model_info",
    "health": "health",
    "stats": "stats",
    "ping": "pong",
    "auth": "auth",
}


@dataclass(frozen=True, slots=True)
class Incoming:
    name: str
    envelope: Envelope
    body: dict[str, Any]  # an event's `data`, or the command message itself

    @property
    def reply_type(self) -> str | None:
        return REPLY_TYPES.get(self.name) if self.envelope is Envelope.COMMAND else None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"the message is not valid JSON: {exc}") from None


def parse_message(obj: Any) -> Incoming:
    if not isinstance(obj, dict):
        raise ProtocolError(
            "bad_message", 'a message must be a JSON object: {"event": NAME, "data": {...}} or {"command": NAME, ...}'
        )
    if isinstance(obj.get("event"), str):
        data = obj.get("data", {})
        if not isinstance(data, dict):
            raise ProtocolError("bad_message", 'an event\'s "data" must be a JSON object')
        if obj["event"] not in EVENTS:
            raise ProtocolError(
                "unknown_event",
                f"unknown event {obj['event'][:64]!r}",
                {"events": list(EVENTS), "commands": list(COMMANDS)},
            )
        return Incoming(obj["event"], Envelope.EVENT, data)
    if isinstance(obj.get("command"), str):
        if obj["command"] not in COMMANDS:
            raise ProtocolError(
                "unknown_command",
                f"unknown command {obj['command'][:64]!r}",
                {"commands": list(COMMANDS), "events": list(EVENTS)},
            )
        return Incoming(obj["command"], Envelope.COMMAND, obj)
    raise ProtocolError(
        "bad_message",
        'a message needs "event" (with "data") or "command"',
        {"events": list(EVENTS), "commands": list(COMMANDS)},
    )


# ---------------------------------------------------------------------------------------------------- frames
class FrameSettings(BaseModel):
    """A frame's `settings`; keys this service does not know are ignored (older clients send their own)."""

    model_config = ConfigDict(extra="ignore")

    confidence_threshold: float = Field(0.0, ge=0.0, le=1.0, description="minimum detector score of a face")
    crowd_threshold: int | None = Field(
        None, ge=0, le=1_000_000, description="crowd_warning past this many faces (default CROWD_THRESHOLD; 0: none)"
    )
    search: bool = Field(False, description="embed each face and find its nearest stored faces")
    top_k: int = Field(1, ge=1, le=MAX_TOP_K, description="matches per face with search")
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="minimum similarity of a match")
    min_quality: float | None = Field(
        None, ge=0.0, le=1.0, description="with search: match only stored faces of at least this quality score"
    )
    heads: list[str] | str | None = Field(None, description="heads to run (default HEADS); [] or '' for none")
    max_side: int | None = Field(
        None, ge=32, le=4096, description="reduce the frame to this long side before detection (default FRAME_MAX_SIDE)"
    )

    def options(self, settings: Settings) -> FrameOptions:
        heads = ",".join(self.heads) if isinstance(self.heads, list) else self.heads
        crowd = settings.crowd_threshold if self.crowd_threshold is None else self.crowd_threshold
        return FrameOptions(
            confidence_threshold=self.confidence_threshold,
            crowd_threshold=crowd,
            search=self.search,
            top_k=self.top_k,
            threshold=self.threshold,
            heads=heads,
            max_side=self.max_side or settings.frame_max_side,
            min_quality=self.min_quality,
        )


def frame_options(body: dict[str, Any], settings: Settings) -> FrameOptions:
    raw = body.get("settings") or {}
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_request", '"settings" must be a JSON object')
    try:
        return FrameSettings.model_validate(raw).options(settings)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ProtocolError("invalid_request", f"invalid settings: {problems}") from None


def frame_text(body: dict[str, Any], settings: Settings, keys: tuple[str, ...] = ("frame", "image")) -> str:
    """The frame's base64 text (a data: URL prefix removed), its length checked against the frame limit
    (Settings.max_frame_chars) before anything is decoded."""
    value = next((body[k] for k in keys if k in body), None)
    if value is None:
        raise ProtocolError("invalid_request", f'the message has no frame: give the image as base64 in "{keys[0]}"')
    if not isinstance(value, str):
        raise ProtocolError("bad_base64", f'"{keys[0]}" must be a base64 string (JPEG, PNG, WebP, ...)')
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) > settings.max_frame_chars:
        raise ImageTooLarge(
            f"the frame is over the {settings.max_frame_bytes} bytes a socket takes (the smaller of MAX_UPLOAD_MB "
            f"and WS_MAX_MESSAGE_BYTES): {len(value)} base64 characters, at most {settings.max_frame_chars}"
        )
    return value


def decode_base64(text: str) -> bytes:
    """Standard base64 (whitespace tolerated). Blocking for large frames: run it in the thread pool."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("bad_base64", f"the frame is not valid base64: {exc}") from None
    if not data:
        raise ProtocolError("bad_base64", "the frame is empty")
    return data


def client_timestamp(body: dict[str, Any]) -> float | int:
    """The client's `timestamp` (ms) echoed back, or the server's time in ms."""
    value = body.get("timestamp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return now_ms()


def now_ms() -> int:
    return round(time.time() * 1000)


# --------------------------------------------------------------------------------------------------- answers
def event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": name, "data": data}


def error_message(
    code: str, message: str, details: dict[str, Any] | None = None, reply_type: str | None = None
) -> dict[str, Any]:
    out = event("error", {"code": code, "message": message, "details": details or {}})
    if reply_type is not None:  # the emotion service's error shape, for command clients
        out.update({"type": reply_type, "status": "error", "error": message})
    return out


def face_json(face: FrameFace) -> dict[str, Any]:
    out: dict[str, Any] = {"bbox": face.bbox, "confidence": face.confidence, "kps": face.kps}
    for key, value in face.attributes.items():
        if isinstance(value, dict) and "label" in value and "scores" in value:  # a softmax head, e.g. emotion
            value = {"label": value["label"], "confidence": value["scores"][value["label"]], "scores": value["scores"]}
        out[key] = value
    quality = quality_out(face.quality)
    out["quality"] = quality.model_dump() if quality is not None else None
    if face.matches is not None:
        out["matches"] = [
            {
                "id": m.id,
                "score": round(m.score, 4),
                "subject": m.payload.get("subject"),
                "file": m.payload.get("file"),
                "face_index": m.payload.get("face_index"),
                "thumb_url": f"/thumbs/{m.id}",
            }
            for m in face.matches
        ]
    if isinstance(face.searched, IdentifiedFace):  # who the face is, as /api/search says it (one serializer)
        said = face_out(face.searched)
        out["identity"] = said.identity.model_dump() if said.identity else None
        out["ref"] = said.ref
        for match, passes in zip(out["matches"], said.matches, strict=True):
            match["same_person"] = passes.same_person
    return out


def detection_result(
    result: FrameResult,
    *,
    alerts: list[Alert],
    frames_dropped: int,
    processing_ms: float,
    timestamp: float | int,
    frame_id: int,
) -> dict[str, Any]:
    return event(
        "detection_result",
        {
            "faces": [face_json(f) for f in result.faces],
            "crowd_analysis": result.crowd.as_dict(),
            "alerts": [a.as_dict() for a in alerts],
            "frames_dropped": frames_dropped,
            "processing_time": round(processing_ms, 2),
            "timestamp": timestamp,
            "frame_id": frame_id,
            "frame_size": [result.width, result.height],
            "heads": result.heads,
            "server_time": now_ms(),
        },
    )


def prediction(
    answer: Prediction | None, *, model: EmotionModel, processing_ms: float, frames_dropped: int
) -> dict[str, Any]:
    common = {
        "type": "prediction",
        "model_version_tag": model.version_tag,
        "processing_time_ms": round(processing_ms, 2),
        "timestamp": time.time(),
        "frames_dropped": frames_dropped,
    }
    if answer is None:
        return {
            **common,
            "status": "error",
            "code": "no_face",
            "faces": 0,
            "error": "no face found in the image: send a photo or frame that shows a face",
        }
    return {
        **common,
        "status": "success",
        "emotion_name": answer.emotion_name,
        "emotion_id": answer.emotion_id,
        "confidence": answer.confidence,
        "scores": answer.scores,
        "bbox": answer.bbox,
        "face_confidence": answer.det_score,
        "faces": answer.faces,
    }


def emotions(model: EmotionModel) -> dict[str, Any]:
    if not model.available:
        return {
            "type": "emotions",
            "status": "error",
            "error": f"the emotion head is unavailable: {model.reason}",
            "emotions": [],
        }
    return {
        "type": "emotions",
        "status": "success",
        "emotions": [{"id": c.id, "name": c.name, "description": c.description} for c in model.classes],
    }


def model_info(model: EmotionModel, *, detector: str) -> dict[str, Any]:
    if not model.available:
        return {
            "type": "model_info",
            "status": "error",
            "error": f"the emotion head is unavailable: {model.reason}",
            "info": {"status": "unavailable", "reason": model.reason},
        }
    return {
        "type": "model_info",
        "status": "success",
        "info": {
            "status": "loaded",
            "name": model.name,
            "input_shape": model.input_shape,
            "num_classes": len(model.classes),
            "total_params": model.total_params,
            "labels": [c.name for c in model.classes],
            "model_version_tag": model.version_tag,
            "providers": model.providers,
            "detector": detector,
        },
    }
