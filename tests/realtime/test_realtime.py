"""Crowd levels, density, alerts and their cool-down, live statistics: the rules on their own."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.realtime import AlertLevel, AlertThrottle, AlertType, CrowdLevel, CrowdScale, RealtimeStats, crowd_alert
from app.realtime.alerts import connection_alert, processing_alert


@pytest.mark.parametrize(
    ("faces", "level"),
    [
        (0, "empty"),
        (1, "low"),
        (2, "low"),
        (3, "medium"),
        (5, "medium"),
        (6, "high"),
        (10, "high"),
        (11, "very_high"),
        (500, "very_high"),
    ],
)
def test_default_crowd_levels(faces: int, level: str) -> None:
    assert CrowdScale.from_settings(Settings()).level(faces) == CrowdLevel(level)


def test_crowd_levels_and_capacity_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWD_LEVELS", "1, 4,8")
    monkeypatch.setenv("CROWD_CAPACITY", "8")
    scale = CrowdScale.from_settings(Settings())
    assert [scale.level(n).value for n in (1, 2, 4, 5, 8, 9)] == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "very_high",
    ]
    assert scale.analyze(2).as_dict() == {"face_count": 2, "crowd_level": "medium", "density_score": 0.25}
    assert scale.density(9) == 1.0  # capped: the share of the capacity in use
    for bad in ("5,3,1", "0,2,3", "2,5", "a,b,c"):
        monkeypatch.setenv("CROWD_LEVELS", bad)
        with pytest.raises(ValidationError, match="CROWD_LEVELS"):
            Settings()


def test_density_score_is_the_share_of_capacity() -> None:
    scale = CrowdScale(capacity=20)
    assert [scale.density(n) for n in (0, 1, 6, 20, 45)] == [0.0, 0.05, 0.3, 1.0, 1.0]


def test_crowd_alert_levels() -> None:
    assert crowd_alert(5, 5) is None and crowd_alert(50, 0) is None  # at the threshold, or alerts off
    warning, critical = crowd_alert(6, 5), crowd_alert(11, 5)
    assert warning is not None and warning.level is AlertLevel.WARNING and warning.type is AlertType.CROWD_WARNING
    assert critical is not None and critical.level is AlertLevel.CRITICAL
    assert warning.as_dict()["details"] == {"face_count": 6, "crowd_threshold": 5}
    assert connection_alert(8, 10) is None
    near, full = connection_alert(9, 10), connection_alert(10, 10)
    assert near is not None and near.level is AlertLevel.WARNING
    assert full is not None and full.level is AlertLevel.CRITICAL and "refused" in full.message
    assert processing_alert(2, "bad_image", "corrupt").level is AlertLevel.ERROR


def test_throttle_holds_repeats_within_the_cool_down_but_lets_escalations_through() -> None:
    now = [100.0]
    throttle = AlertThrottle(10.0, clock=lambda: now[0])
    warning, critical = crowd_alert(6, 5), crowd_alert(11, 5)
    error = processing_alert(1, "bad_image", "corrupt")
    assert throttle.admit([warning, None, error]) == [warning, error]  # each type on its own clock
    now[0] += 5
    assert throttle.admit([warning, error]) == []
    assert throttle.admit([critical]) == [critical]  # a higher level is told at once
    now[0] += 9
    assert throttle.admit([warning]) == []  # 9 s after the critical one
    now[0] += 1
    assert throttle.admit([warning]) == [warning]
    assert throttle.suppressed == 3
    assert AlertThrottle(0.0).admit([warning, warning]) == [warning, warning]  # ALERT_COOLDOWN=0: no cool-down


def test_stats_series() -> None:
    stats = RealtimeStats()
    assert stats.snapshot()["average_processing_time"] == 0 and stats.snapshot()["p95_processing_time"] == 0
    for ms in range(1, 101):
        stats.observe(ms / 1000, prediction=ms % 2 == 0)
    snap = stats.snapshot()
    assert snap["total_frames_processed"] == 100 and snap["total_predictions"] == 50
    assert snap["average_processing_time"] == pytest.approx(50.5)
    assert snap["p95_processing_time"] == pytest.approx(95.05)
    assert list(snap)[:6] == [
        "active_connections",
        "total_frames_processed",
        "total_frames_dropped",
        "average_processing_time",
        "p95_processing_time",
        "uptime",
    ]
