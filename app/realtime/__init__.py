"""Real time: what the WebSocket (/ws) and the live page need that is not HTTP. Crowd levels and the density
score of a frame (crowd), alerts and their per-connection cool-down (alerts), the live statistics (stats), and
the frame and prediction flow over FaceService (frames). Between the service and the API layer; nothing here
knows FastAPI or a socket."""

from app.realtime.alerts import Alert, AlertLevel, AlertThrottle, AlertType, connection_alert, crowd_alert
from app.realtime.crowd import CrowdAnalysis, CrowdLevel, CrowdScale
from app.realtime.frames import (
    EMOTION_HEAD,
    EmotionClass,
    EmotionModel,
    FrameAnalyzer,
    FrameFace,
    FrameOptions,
    FrameResult,
    Prediction,
)
from app.realtime.stats import RealtimeStats

__all__ = [
    "EMOTION_HEAD",
    "Alert",
    "AlertLevel",
    "AlertThrottle",
    "AlertType",
    "CrowdAnalysis",
    "CrowdLevel",
    "CrowdScale",
    "EmotionClass",
    "EmotionModel",
    "FrameAnalyzer",
    "FrameFace",
    "FrameOptions",
    "FrameResult",
    "Prediction",
    "RealtimeStats",
    "connection_alert",
    "crowd_alert",
]
