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
