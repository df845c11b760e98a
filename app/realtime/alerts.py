"""Alerts a connection receives with its results, and the per-connection cool-down that keeps one crowded scene
from sending the same alert with every frame."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AlertType(StrEnum):
    CROWD_WARNING = "crowd_warning"  # more faces than the connection's crowd_threshold
    PROCESSING_ERROR = "processing_error"  # frames of this connection failed since its last result
    CONNECTION_LIMIT = "connection_limit"  # the service is near or at MAX_CONCURRENT_CONNECTIONS


class AlertLevel(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(AlertLevel).index(self)


@dataclass(frozen=True, slots=True)
class Alert:
    type: AlertType
    level: AlertLevel
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=lambda: round(time.time() * 1000))  # ms since the epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "level": self.level.value,
            "message": self.message,
            "timestamp": self.timestamp,
            "details": self.details,
        }


def crowd_alert(face_count: int, threshold: int) -> Alert | None:
    """crowd_warning when the count passes `threshold` (0: never): warning, critical past twice the threshold."""
    if threshold <= 0 or face_count <= threshold:
        return None
    level = AlertLevel.CRITICAL if face_count > 2 * threshold else AlertLevel.WARNING
    return Alert(
        AlertType.CROWD_WARNING,
        level,
        f"{face_count} faces in view, over the crowd threshold of {threshold}",
        {"face_count": face_count, "crowd_threshold": threshold},
    )


def processing_alert(failures: int, code: str, message: str) -> Alert:
    return Alert(
        AlertType.PROCESSING_ERROR,
        AlertLevel.ERROR,
        f"{failures} frame{'s' if failures != 1 else ''} of this connection failed since its last "
        f"result; last: {message}",
        {"failed_frames": failures, "last_code": code},
    )


def connection_alert(active: int, limit: int) -> Alert | None:
    """The service at 90% of MAX_CONCURRENT_CONNECTIONS or more: warning; at the limit (new sockets are turned
    away): critical."""
    if active < 0.9 * limit:
        return None
    level = AlertLevel.CRITICAL if active >= limit else AlertLevel.WARNING
    return Alert(
        AlertType.CONNECTION_LIMIT,
        level,
        f"{active} of {limit} connections in use"
        f"{': new connections are refused' if active >= limit else ''} (MAX_CONCURRENT_CONNECTIONS)",
        {"active_connections": active, "max_concurrent_connections": limit},
    )


class AlertThrottle:
    """One connection's cool-down: an alert type is let through at most once per `cooldown` seconds, unless its
    level is higher than the last one let through (a crowd growing from warning to critical is told at once).
    Held back alerts are counted in `suppressed`."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.suppressed = 0
        self._last: dict[AlertType, tuple[float, AlertLevel]] = {}

    def admit(self, alerts: Iterable[Alert | None]) -> list[Alert]:
        now = self.clock()
        out = []
        for alert in alerts:
            if alert is None:
                continue
            last = self._last.get(alert.type)
            if last is not None and now - last[0] < self.cooldown and alert.level.rank <= last[1].rank:
                self.suppressed += 1
                continue
            self._last[alert.type] = (now, alert.level)
            out.append(alert)
        return out
