"""FaceService.search: its matches carry the payload keys the answers show (MATCH_KEYS), not the whole stored
payload (quality record, hashes, times), which only cost the search and the answer's pickling."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from app.engine import FaceEngine
from app.service import MATCH_KEYS
from app.store import Origin
from tests.service.test_writers import item
from tests.support import Photos, workspace


def test_matches_carry_the_keys_answers_show(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    with workspace(tmp_path, ingest_engine) as ws:
        stored = replace(item(Photos.yaoming, "people/yao.jpg"), subject="Yao", origin=Origin.UPLOAD, replace=False)
        (indexed,) = ws.service.index([stored])
        assert indexed.ids
        full = ws.store.retrieve(indexed.ids)[0].payload
        assert {"quality", "content_hash", "ingested_at"} <= set(full)  # what a stored face holds

        (row,) = ws.service.search([item(Photos.yaoming, "query.jpg").image])
        match = row[0].matches[0]
        assert match.id == indexed.ids[0]
        assert match.payload == {"file": "people/yao.jpg", "face_index": 0, "subject": "Yao"}
        assert set(MATCH_KEYS) == set(match.payload)
