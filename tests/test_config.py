"""Settings: every limit is defined once and checked when the environment is read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import MAX_TOP_K, Settings


def test_top_k_over_the_search_bound_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: TOP_K=150 started fine and then every default search answered 400 (the search code capped at 100).
    monkeypatch.setenv("TOP_K", str(MAX_TOP_K + 50))
    with pytest.raises(ValidationError, match="top_k"):
        Settings()
    monkeypatch.setenv("TOP_K", str(MAX_TOP_K))
    assert Settings().top_k == MAX_TOP_K


def test_default_search_uses_top_k_from_the_environment(client_factory, photos) -> None:  # type: ignore[no-untyped-def]
    client = client_factory(top_k=MAX_TOP_K)
    with open(photos.yaoming, "rb") as fh:
        response = client.post("/api/search", files={"file": ("y.jpg", fh, "image/jpeg")})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RATE_LIMIT", "5/fortnight", "RATE_LIMIT"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.0/8,proxy.local", "FORWARDED_ALLOW_IPS"),
        ("CORS_ORIGINS", "app.example.org", "CORS_ORIGINS"),
        ("AUTH_READS", "sometimes", "auth_reads"),
        ("LOG_FORMAT", "xml", "log_format"),
    ],
)
def test_access_settings_are_checked_at_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_access_settings_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.rate_limits == [] and defaults.cors_origin_list == [] and defaults.auth_reads == "open"
    assert [str(n) for n in defaults.forwarded_networks or []] == ["127.0.0.1/32", "::1/128"]
    monkeypatch.setenv("RATE_LIMIT", "20/second;600/minute")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example.org/, http://localhost:3000")
    settings = Settings()
    assert [(i.amount, i.GRANULARITY.name) for i in settings.rate_limits] == [(20, "second"), (600, "minute")]
    assert settings.forwarded_networks is None
    assert settings.cors_origin_list == ["https://a.example.org", "http://localhost:3000"]


@pytest.mark.parametrize("value", ["0", "-1", "65", "many", "2.5"])
def test_workers_must_be_a_count_or_auto(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WORKERS", value)
    with pytest.raises(ValidationError, match="WORKERS"):
        Settings()


def test_workers_auto_means_several_only_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().worker_count(cuda=True) == 1  # the default: one process, as before
    monkeypatch.setenv("WORKERS", " AUTO ")
    settings = Settings()
    assert settings.worker_count(cuda=False) == 1  # on the CPU the engine itself needs the cores
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert settings.worker_count(cuda=True) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert settings.worker_count(cuda=True) == 2
    monkeypatch.setenv("WORKERS", "3")
    assert Settings().worker_count(cuda=False) == 3


@pytest.mark.parametrize(("old", "new"), [("DET_BATCH", "DET_BATCH_SIZES"), ("REC_BATCH", "REC_BATCH_SIZES")])
def test_a_renamed_setting_stops_start_up_naming_its_new_name(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    monkeypatch.setenv(old, "16")
    with pytest.raises(ValidationError, match=f"{old} is now {new}"):
        Settings()
