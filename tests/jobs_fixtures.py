"""Fixtures of the ingest tests, loaded with `pytest_plugins = ["tests.jobs_fixtures"]` (tests/conftest.py is
shared with other work): engines built once per session."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.engine import FaceEngine
from app.runtime import InferenceGate


@pytest.fixture(scope="session")
def ingest_engine() -> FaceEngine:
    """The service's configuration: one inference slot (one inference worker)."""
    return FaceEngine.from_settings(Settings(), InferenceGate(1, 5.0))


@pytest.fixture(scope="session")
def two_slot_engine() -> FaceEngine:
    """`python -m app.ingest`'s configuration on 2 CPU cores: one ORT thread, two inference workers."""
    return FaceEngine.from_settings(Settings(ort_threads=1, gpu_concurrency=2), InferenceGate(2, 5.0))


@pytest.fixture(params=["one_slot", "two_slots"])
def any_engine(request: pytest.FixtureRequest) -> FaceEngine:
    engine: FaceEngine = request.getfixturevalue("ingest_engine" if request.param == "one_slot" else "two_slot_engine")
    return engine
