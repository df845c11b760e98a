"""ThumbnailStore: only canonical UUIDs name thumbnails, so no id can reach outside THUMBS_DIR.

The HTTP route never lets a path separator through to the store (the router answers 404 first), so the
validator is tested here directly."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.errors import NotFound
from app.store import ThumbnailStore

FACE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def thumbs(tmp_path: Path) -> ThumbnailStore:
    return ThumbnailStore(tmp_path / "thumbs")


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "..%2Fx",
        "..\\x",
        "/etc/passwd",
        f"/{FACE_ID}",
        f"../{FACE_ID}",
        f"{FACE_ID}/../../x",
        f"{FACE_ID}.jpg",
        "",
        ".",
        "..",
    ],
)
def test_paths_are_not_face_ids(thumbs: ThumbnailStore, bad: str) -> None:
    with pytest.raises(NotFound, match="face ids are UUIDs"):
        thumbs.validate_id(bad)
    with pytest.raises(NotFound):
        thumbs.path_for(bad)


@pytest.mark.parametrize(
    "variant",
    [
        "{" + FACE_ID + "}",  # braces
        "urn:uuid:" + FACE_ID,  # URN form
        FACE_ID.replace("-", ""),  # no dashes
        "0f8fad5bd9cb-469f-a165-70867728-950e",  # dashes elsewhere
        f" {FACE_ID}",  # whitespace
        f"{FACE_ID}\n",
        FACE_ID[:-1],  # too short
        FACE_ID + "0",  # too long
        FACE_ID[:-1] + "g",  # not hex
    ],
)
def test_non_canonical_spellings_of_a_uuid_are_refused(thumbs: ThumbnailStore, variant: str) -> None:
    """uuid.UUID() parses all of these (the malformed ones aside); only the canonical 8-4-4-4-12 form names a
    thumbnail, so one face has one path."""
    with pytest.raises(NotFound, match="face ids are UUIDs"):
        thumbs.validate_id(variant)


@pytest.mark.parametrize("bad", [None, 7, b"0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_non_strings_are_refused(thumbs: ThumbnailStore, bad: object) -> None:
    with pytest.raises(NotFound):
        thumbs.validate_id(bad)  # type: ignore[arg-type]


def test_canonical_id_maps_under_the_root(thumbs: ThumbnailStore) -> None:
    assert thumbs.validate_id(FACE_ID) == FACE_ID
    path = thumbs.path_for(FACE_ID)
    assert path == thumbs.root / "0f" / f"{FACE_ID}.jpg"
    assert path.resolve().is_relative_to(thumbs.root.resolve())


def test_upper_case_is_the_same_face_in_lower_case(thumbs: ThumbnailStore) -> None:
    """Hex digits are case-insensitive: an upper-case id is accepted and names the lower-case file."""
    upper = FACE_ID.upper()
    assert thumbs.validate_id(upper) == FACE_ID
    assert thumbs.path_for(upper) == thumbs.root / "0f" / f"{FACE_ID}.jpg"
    mixed = FACE_ID[:9].upper() + FACE_ID[9:]
    assert thumbs.validate_id(mixed) == FACE_ID


def test_every_generated_id_round_trips(thumbs: ThumbnailStore) -> None:
    for _ in range(50):
        face_id = str(uuid.uuid4())
        assert thumbs.validate_id(face_id) == face_id
        assert thumbs.path_for(face_id).parent == thumbs.root / face_id[:2]


def test_save_existing_delete(thumbs: ThumbnailStore) -> None:
    with pytest.raises(NotFound, match="no thumbnail"):
        thumbs.existing(FACE_ID)
    thumbs.save(FACE_ID.upper(), b"\xff\xd8jpeg")
    assert thumbs.existing(FACE_ID).read_bytes() == b"\xff\xd8jpeg"
    assert [p.relative_to(thumbs.root).as_posix() for p in thumbs.root.rglob("*") if p.is_file()] == [
        f"0f/{FACE_ID}.jpg"
    ]  # no temporary file left beside it
    thumbs.delete(FACE_ID)
    with pytest.raises(NotFound):
        thumbs.existing(FACE_ID)
    with pytest.raises(NotFound):
        thumbs.save("../escape", b"x")
    assert not (thumbs.root.parent / "escape.jpg").exists() and not any(thumbs.root.parent.glob("*.jpg"))
