"""Request and response schemas of the people routes (subjects, faces by subject, feedback, clusters)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from app.api.schemas import IndexStateOut, MatchOut, match_out
from app.ingest.model import JobOut
from app.people import MAX_NAME, NAME_PATTERN, ClusterView, FeedbackRecord, Overview, Similar, SubjectSummary
from app.people.clusters_state import ClusterRecord
from app.store import CollectionInfo, Match

# Documented in the schema; checked by app.people.subject_name, whose 400 names the problem.
NAME_RULE: JsonDict = {"pattern": NAME_PATTERN, "maxLength": MAX_NAME}
FACE_ID_RULE: JsonDict = {"pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}


class SubjectOut(BaseModel):
    name: str
    faces: int = Field(description="how many faces have this subject")
    cover_id: str | None = Field(description="the face shown for the subject (best detection score)")
    cover_url: str | None = Field(description="its thumbnail")
    created: float | None = Field(description="when its earliest face was indexed (Unix time)")
    updated: float | None = Field(description="when its latest face was indexed (Unix time)")


class SubjectListOut(BaseModel):
    subjects: list[SubjectOut]
    total: int = Field(description="subjects matching `search`")
    offset: int
    limit: int


class StoredFaceOut(BaseModel):
    id: str
    subject: str | None
    file: str | None
    face_index: int | None
    origin: str | None
    bbox: list[float] | None
    det_score: float | None
    ingested_at: float | None
    thumb_url: str
    quality: float | None = Field(
        default=None, description='its quality score at indexing (README "Face quality"); null: indexed before'
    )
    quality_flagged: bool = Field(default=False, description="its score was under QUALITY_MIN when it was indexed")


class FaceListOut(BaseModel):
    faces: list[StoredFaceOut]
    next: str | None = Field(description="pass as `after` for the next page; null: the last page")


class SubjectDetailOut(SubjectOut):
    face_list: FaceListOut = Field(description="a page of the subject's faces")


class RenameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=4 * MAX_NAME, description="the new name", json_schema_extra=NAME_RULE)


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(
        alias="from",
        max_length=4 * MAX_NAME,
        description="the subject whose faces join this one",
        json_schema_extra=NAME_RULE,
    )


class MergeOut(BaseModel):
    subject: SubjectOut


class FaceSubjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str | None = Field(
        max_length=4 * MAX_NAME, description="the face's new subject; null: none", json_schema_extra=NAME_RULE
    )


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(
        min_length=1,
        max_length=64,
        description="the query face: a stored face's id, or the `ref` a search answer gave the face",
    )
    match_id: str = Field(min_length=1, max_length=64, description="the id of the match judged")
    same_person: bool = Field(description="true: the same person (thumbs up); false: someone else")


class FeedbackOut(BaseModel):
    id: int
    created: float
    key: str | None = Field(description="the API key that sent it (null: a loopback client in protected mode)")
    query: str
    query_face: str | None
    query_subject: str | None
    match_id: str
    match_subject: str | None
    same_person: bool
    score: float = Field(description="the pair's cosine similarity when the feedback was given")


class FeedbackListOut(BaseModel):
    feedback: list[FeedbackOut]
    total: int
    next: int | None = Field(description="pass as `after` for the next page; null: the last page")


class CalibrationOut(BaseModel):
    """What a calibration measured (the fields app.calibration.report.calibration_figures gives)."""

    genuine_pairs: int
    impostor_pairs: int
    eer: float
    far_target: float
    threshold: float
    far: float
    frr: float
    applied: bool


class FeedbackCalibrationOut(CalibrationOut):
    left_out: int = Field(description="feedback whose faces were erased since")


class EnrolledCalibrationOut(CalibrationOut):
    subjects: int = Field(description="subjects in the collection")
    faces: int = Field(description="faces with a subject in the collection")
    scored: int = Field(description="faces scored: at most `per_subject` of a subject, `max_faces` in all")


class OverviewOut(BaseModel):
    faces: int = Field(description="faces in the collection")
    subjects: int = Field(description="subjects (named people)")
    unknown_faces: int = Field(description="faces without a subject")
    clusters: int = Field(description="clusters of unknown faces waiting for a name")
    unclustered: int = Field(description="unknown faces in no cluster")
    index: IndexStateOut
    last_cluster_job: JobOut | None = Field(
        default=None, description="the latest clustering job (as GET /api/jobs/{id}), null when none ran"
    )


class SimilarOut(BaseModel):
    face: StoredFaceOut = Field(description="the stored face searched by")
    threshold: float = Field(description="the 'same person' threshold in force")
    matches: list[MatchOut] = Field(description="the nearest other stored faces, best first")


def overview_out(o: Overview, info: CollectionInfo) -> OverviewOut:
    return OverviewOut(
        faces=o.faces,
        subjects=o.subjects,
        unknown_faces=o.unknown_faces,
        clusters=o.clusters,
        unclustered=o.unclustered,
        last_cluster_job=o.last_cluster_job.to_out() if o.last_cluster_job is not None else None,
        index=IndexStateOut(**IndexStateOut.fields_of(info)),
    )


def similar_out(s: Similar) -> SimilarOut:
    return SimilarOut(
        face=stored_face_out(s.face),
        threshold=s.threshold,
        matches=[match_out(m, passes) for m, passes in zip(s.matches, s.same_person, strict=True)],
    )


CLUSTER_ID_RULE: JsonDict = {"pattern": "^[0-9a-f]{16}$"}


class ClusterSampleOut(BaseModel):
    id: str
    thumbnail: str = Field(description="the face's thumbnail URL")


class ClusterOut(BaseModel):
    id: str
    size: int = Field(description="faces in the cluster")
    cohesion: float | None = Field(
        description="mean cosine similarity of its faces (up to 64) to their mean: 1 is one face, ~0.5 is loose"
    )
    samples: list[ClusterSampleOut] = Field(description="its best faces (quality, else detection score)")
    created: float
    updated: float


class ClusterListOut(BaseModel):
    clusters: list[ClusterOut] = Field(description="largest first")
    total: int = Field(description="clusters of at least `min_size` faces")
    offset: int
    limit: int
    unclustered: int = Field(description="faces without a subject in no cluster")
    job: JobOut | None = Field(description="the latest clustering job (null: none ever ran)")


class ClusterFaceOut(BaseModel):
    id: str
    file: str | None
    thumbnail: str
    quality: float | None = Field(description="the face's quality score (null: indexed before quality existed)")


class ClusterDetailOut(BaseModel):
    id: str
    size: int
    cohesion: float | None
    faces: list[ClusterFaceOut]


class ClusterNameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        max_length=4 * MAX_NAME,
        description="the subject its faces get (new, or an existing subject they join)",
        json_schema_extra=NAME_RULE,
    )


class ClusterMergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    into: str = Field(
        max_length=64, description="the cluster whose faces these join", json_schema_extra=CLUSTER_ID_RULE
    )


def cluster_out(r: ClusterRecord) -> ClusterOut:
    return ClusterOut(
        id=r.id,
        size=r.size,
        cohesion=r.cohesion,
        samples=[ClusterSampleOut(id=i, thumbnail=f"/thumbs/{i}") for i in r.samples],
        created=r.created,
        updated=r.updated,
    )


def cluster_detail_out(view: ClusterView) -> ClusterDetailOut:
    return ClusterDetailOut(
        id=view.record.id,
        size=view.record.size,
        cohesion=view.record.cohesion,
        faces=[
            ClusterFaceOut(
                id=f.id,
                file=f.payload.get("file"),
                thumbnail=f"/thumbs/{f.id}",
                quality=q if isinstance(q := f.payload.get("quality"), int | float) else None,
            )
            for f in view.faces
        ],
    )


def subject_out(s: SubjectSummary) -> SubjectOut:
    return SubjectOut(
        name=s.name,
        faces=s.faces,
        cover_id=s.cover,
        cover_url=f"/thumbs/{s.cover}" if s.cover else None,
        created=s.created,
        updated=s.updated,
    )


def stored_face_out(m: Match) -> StoredFaceOut:
    p = m.payload
    return StoredFaceOut(
        id=m.id,
        subject=p.get("subject"),
        file=p.get("file"),
        face_index=p.get("face_index"),
        origin=p.get("origin"),
        bbox=p.get("bbox"),
        det_score=p.get("det_score"),
        ingested_at=p.get("ingested_at"),
        thumb_url=f"/thumbs/{m.id}",
        quality=p.get("quality"),
        quality_flagged=p.get("quality_flagged") is True,
    )


def feedback_out(r: FeedbackRecord) -> FeedbackOut:
    return FeedbackOut(
        id=r.id,
        created=r.created,
        key=r.key,
        query=r.query,
        query_face=r.query_face,
        query_subject=r.query_subject,
        match_id=r.match_id,
        match_subject=r.match_subject,
        same_person=r.same_person,
        score=r.score,
    )
