"""The README says what the code does: every setting is in its settings table, every oceano_* series /metrics
publishes is in its metrics table (each found by its name in backquotes)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from tests.support import REPO

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_every_setting_is_in_the_settings_table() -> None:
    table = section("Settings")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert missing == [], f"settings missing from README's Settings table: {missing}"


def test_every_series_of_metrics_is_in_the_metrics_table(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:  # a socket open: the oceano_ws_* series are there
        ws.receive_json()
        text = client.get("/metrics").text
    table = section("Metrics")
    documented = set(re.findall(r"`(oceano_[a-z0-9_]+)`", table))
    series = {s.name for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("oceano_")}
    # a histogram is documented by its name, its _bucket/_sum/_count samples follow; a counter by its _total name
    families = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in series}
    missing = sorted(name for name in families if name not in documented and f"{name}_total" not in documented)
    assert missing == [], f"series missing from README's Metrics table: {missing}"
    assert len(families) > 20


def test_compose_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml's `${NAME:-default}` fallbacks are the defaults of app/config.py (it had
    UVICORN_LIMIT_CONCURRENCY 64 where the code and README say 1024)."""
    compose = (REPO / "docker-compose.yml").read_text()
    fallbacks = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", compose))
    fields = {name.upper(): name for name in Settings.model_fields}
    checked = {name: value for name, value in fallbacks.items() if name in fields}
    assert "UVICORN_LIMIT_CONCURRENCY" in checked and len(checked) > 8
    defaults = Settings()
    for name, value in checked.items():
        monkeypatch.setenv(name, value)
    from_compose = Settings()
    differ = {
        n: (v, getattr(defaults, fields[n]))
        for n, v in checked.items()
        if getattr(from_compose, fields[n]) != getattr(defaults, fields[n])
    }
    assert differ == {}, f"compose fallback vs app/config.py default: {differ}"
