"""app.logs: redaction and escaping line by line (tests/api/test_log_safety.py scans the real service's log)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.logs import configure_logging, escape_controls, redact

KEY = "oc_" + "Zq3" * 15


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (
            f'127.0.0.1:5 - "WebSocket /ws?key={KEY}" [accepted]',
            '127.0.0.1:5 - "WebSocket /ws?key=[redacted]" [accepted]',
        ),
        (f"GET /status?a=1&api_key={KEY}&b=2", "GET /status?a=1&api_key=[redacted]&b=2"),
        ("GET /x?token=abc.def", "GET /x?token=[redacted]"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "Basic [redacted]"}'),
        (f"x-api-key: {KEY}", "x-api-key: [redacted]"),
        (f"failed with {KEY} in it", "failed with oc_[redacted] in it"),
    ],
)
def test_secrets_are_redacted(line: str, kept: str) -> None:
    assert redact(line) == kept and KEY not in redact(line)


def test_the_access_lines_key_name_is_not_a_secret() -> None:
    line = "POST /api/faces 201 3.0 ms key=importer client=127.0.0.1"
    assert redact(line) == line


def test_control_characters_are_escaped() -> None:
    assert escape_controls("GET /a\nFORGED 200\r\x00\x1b[31m\u2028\x85\tz") == (
        "GET /a\\nFORGED 200\\r\\x00\\x1b[31m\\u2028\\x85\\tz"
    )


@pytest.mark.parametrize("json_lines", [False, True])
def test_every_logger_goes_through_the_filter(json_lines: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's loggers propagate to the root handler: their lines are redacted (and escaped) like the app's; so
    are tracebacks."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    # As `python -m app` leaves them (uvicorn run with log_config=None and log_level=LOG_LEVEL), whatever uvicorn
    # run earlier in this process did to them (its own logging config gives them handlers, its log_level a level).
    uvicorn_logger = logging.getLogger("uvicorn")
    monkeypatch.setattr(uvicorn_logger, "handlers", [])
    monkeypatch.setattr(uvicorn_logger, "propagate", True)
    error_logger = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(error_logger, "handlers", [])
    monkeypatch.setattr(error_logger, "propagate", True)
    monkeypatch.setattr(error_logger, "disabled", False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, uvicorn_logger.level, error_logger.level)
    try:
        uvicorn_logger.setLevel(logging.NOTSET)
        error_logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears logging's cache of levels
        configure_logging("INFO", json_lines=json_lines)
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/ws?key={KEY}")
        logging.getLogger("app.api.context").info("GET %s 404", "/a\nFORGED")
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError:
            logging.getLogger("app.x").exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_logger.setLevel(saved[2])
        error_logger.setLevel(saved[3])
    out = stream.getvalue()
    assert KEY not in out and "/ws?key=[redacted]" in out
    if json_lines:
        assert [json.loads(line)["logger"] for line in out.splitlines()] == [
            "uvicorn.error",
            "app.api.context",
            "app.x",
        ]
    else:
        assert "GET /a\\nFORGED 404" in out and not any(line.startswith("FORGED") for line in out.splitlines())
