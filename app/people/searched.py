"""FaceService with people: its search answers say who each face is (IdentifiedFace), and it reads and relabels
stored faces by payload for the subjects routes. app.bootstrap builds this one; everything else sees a FaceService."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.engine import Ticket
from app.heads import Head
from app.imaging import DecodedImage
from app.people.identity import Identity
from app.service import FaceService, SearchedFace
from app.store import FaceFilter, Match


@dataclass(slots=True)
class IdentifiedFace(SearchedFace):
    """A searched face with who it is (None: no enrolled subject passes the threshold), whether each match passes
    the threshold, and a reference to the face for feedback."""

    identity: Identity | None = None
    same_person: list[bool] = dataclasses.field(default_factory=list)
    ref: str | None = None


FIELDS = dataclasses.fields(SearchedFace)


class Identifier(Protocol):
    """Says who the faces of one photo are (app.people.People)."""

    def identify(self, photo: Sequence[IdentifiedFace]) -> None: ...


class PeopleFaceService(FaceService):
    people: Identifier | None = None  # set by app.bootstrap once People is built over this service

    def search(
        self,
        images: Sequence[DecodedImage],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        heads: Sequence[Head] = (),
        ticket: Ticket | None = None,
        min_quality: float | None = None,
    ) -> list[list[SearchedFace]]:
        photos = super().search(
            images, top_k=top_k, threshold=threshold, heads=heads, ticket=ticket, min_quality=min_quality
        )
        if self.people is None:
            return photos
        identified: list[list[SearchedFace]] = []
        for photo in photos:
            faces = [
                IdentifiedFace(**{f.name: getattr(face, f.name) for f in dataclasses.fields(face)}) for face in photo
            ]
            self.people.identify(faces)
            identified.append(list(faces))
        return identified

    # ------------------------------------------------------------------ faces by payload (app.people)
    def list_faces(
        self, where: FaceFilter, *, offset: str | None, limit: int, keys: Sequence[str] | None = None
    ) -> tuple[list[Match], str | None]:
        """One page of stored faces (payloads, id order) and where the next page starts (None: the end)."""
        return self.store.scroll(where, offset=offset, limit=limit, keys=keys)

    def get_faces(self, ids: Sequence[str]) -> list[Match]:
        return self.store.retrieve([self.thumbs.validate_id(i) for i in ids])

    def set_subject(self, ids: Sequence[str], subject: str | None) -> None:
        """Give these faces a subject (None: none)."""
        self.store.set_payload(ids, {"subject": subject})

    def face_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        return self.store.vectors(ids)

    def build_index(self) -> bool:
        """Index what payload updates left unindexed (Qdrant Edge moves an updated point out of its indexed segment:
        searches over it are exact until a build). Blocks the process while it builds, as ingest's builds do."""
        return self.store.optimize()

    def update_faces(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set these payload keys on these faces (other keys kept; None clears a key's value; gone faces skipped)."""
        self.store.set_payload(ids, payload)

    def neighbours(
        self, vectors: np.ndarray[Any, Any], *, limit: int, min_score: float, where: FaceFilter, hnsw_ef: int
    ) -> list[list[Match]]:
        """The stored faces `where` selects nearest each vector (at most `limit`, score at least `min_score`), one
        batched index search, with their payloads (the clustering of app.people.clusters)."""
        return self.store.search(vectors, limit=limit, threshold=min_score, hnsw_ef=max(hnsw_ef, limit), where=where)
