"""Subject routes: the collection at a glance, the people of the collection (list, one with its faces, rename,
merge, erase), faces listed by subject, file or origin, one face moved to another subject, and the stored faces
nearest to a stored one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from app.api.contract import errors
from app.api.deps import PeopleDep, ServiceDep
from app.api.people_schemas import (
    FACE_ID_RULE,
    NAME_RULE,
    EnrolledCalibrationOut,
    FaceListOut,
    FaceSubjectIn,
    MergeIn,
    OverviewOut,
    RenameIn,
    SimilarOut,
    StoredFaceOut,
    SubjectDetailOut,
    SubjectListOut,
    SubjectOut,
    overview_out,
    similar_out,
    stored_face_out,
    subject_out,
)
from app.api.schemas import DeleteOut
from app.api.upload import run_blocking
from app.calibration.report import calibration_figures
from app.errors import InvalidRequest
from app.people import subject_name
from app.store import FaceFilter, Origin

router = APIRouter(tags=["subjects"])

Limit = Annotated[int, Query(ge=1, le=1000, description="faces per page")]
After = Annotated[
    str | None,
    Query(max_length=64, description="the `next` of the previous page", json_schema_extra=FACE_ID_RULE),
]
MAX_CALIBRATION_FACES = 2000  # 1,999,000 pairs: the most one calibration scores (with its bootstrap)
SubjectName = Annotated[str, Path(description="the subject's name", json_schema_extra=NAME_RULE)]


@router.get("/api/people/overview", response_model=OverviewOut, responses=errors(503, 504))
async def people_overview(request: Request, people: PeopleDep, service: ServiceDep) -> OverviewOut:
    """The collection at a glance: faces, subjects, unknown faces (without a subject), their clusters and the
    faces in none, and the index's state. Counted by one scan of two payload keys (a page of faces at a time)."""
    counts = await run_blocking(request, people.overview)
    return overview_out(counts, await run_blocking(request, service.collection_info))


@router.get("/api/subjects", response_model=SubjectListOut, responses=errors(422, 503, 504))
async def list_subjects(
    request: Request,
    people: PeopleDep,
    search: Annotated[str | None, Query(max_length=128, description="only names holding this (any case)")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SubjectListOut:
    """Every subject in name order with its face count, cover thumbnail and when its faces were indexed. Counted
    by one scan of the collection (a page of faces at a time)."""
    page = await run_blocking(request, lambda: people.subjects(search=search, offset=offset, limit=limit))
    return SubjectListOut(
        subjects=[subject_out(s) for s in page.subjects], total=page.total, offset=page.offset, limit=page.limit
    )


@router.post("/api/calibrate/subjects", response_model=EnrolledCalibrationOut, responses=errors(400, 422, 503, 504))
async def calibrate_on_subjects(
    request: Request,
    people: PeopleDep,
    far: Annotated[float, Query(gt=0, lt=1, description="the false accept rate to choose the threshold at")] = 1e-3,
    apply: Annotated[bool, Query(description="store the threshold with the collection (in force at once)")] = False,
    per_subject: Annotated[int, Query(ge=2, le=1000, description="faces of one subject scored at most")] = 20,
    max_faces: Annotated[int, Query(ge=3, le=MAX_CALIBRATION_FACES, description="faces scored in all")] = 1000,
) -> EnrolledCalibrationOut:
    """The threshold measured on the collection's own subjects (faces of one subject: genuine pairs, of two
    subjects: impostor pairs; scores from the stored vectors): what `python -m app.calibrate --enrolled` runs when
    the service owns the embedded store. Bounded: `max_faces` faces give at most max_faces (max_faces - 1) / 2
    pairs (1000: 499,500)."""
    result, sample = await run_blocking(
        request,
        lambda: people.calibrate_enrolled(far=far, apply=apply, per_subject=per_subject, max_faces=max_faces),
    )
    return EnrolledCalibrationOut(
        **calibration_figures(result, far=far, apply=apply),
        subjects=sample.subjects,
        faces=sample.faces,
        scored=len(sample.files),
    )


@router.get("/api/subjects/{name}", response_model=SubjectDetailOut, responses=errors(400, 404, 422, 503, 504))
async def get_subject(
    request: Request, name: SubjectName, people: PeopleDep, after: After = None, limit: Limit = 100
) -> SubjectDetailOut:
    """One subject and a page of its faces (thumbnails under thumb_url)."""

    def work() -> SubjectDetailOut:
        summary = people.summary(name)
        page = people.faces(FaceFilter(subject=summary.name), after=after, limit=limit)
        return SubjectDetailOut(
            **subject_out(summary).model_dump(),
            face_list=FaceListOut(faces=[stored_face_out(f) for f in page.faces], next=page.next),
        )

    return await run_blocking(request, work)


@router.patch("/api/subjects/{name}", response_model=SubjectOut, responses=errors(400, 404, 409, 422, 503, 504))
async def rename_subject(request: Request, name: SubjectName, body: RenameIn, people: PeopleDep) -> SubjectOut:
    """Rename a subject: every face of it gets the new name (409 when the new name is another subject's: merge
    instead). Journalled: a stop half-way is finished at the next start; a retried rename answers 200."""
    return subject_out(await run_blocking(request, lambda: people.rename(name, body.name)))


@router.post("/api/subjects/{name}/merge", response_model=SubjectOut, responses=errors(400, 404, 422, 503, 504))
async def merge_subject(request: Request, name: SubjectName, body: MergeIn, people: PeopleDep) -> SubjectOut:
    """Merge another subject into this one (`{"from": "other name"}`): its faces join this subject."""
    return subject_out(await run_blocking(request, lambda: people.merge(name, body.source)))


@router.delete("/api/subjects/{name}", response_model=DeleteOut, responses=errors(400, 404, 409, 422, 503, 504))
async def delete_subject(request: Request, name: SubjectName, people: PeopleDep) -> DeleteOut:
    """Erase the subject: every face of it with its thumbnail (as DELETE /api/faces?subject=), and the feedback
    about it."""
    return DeleteOut(deleted=await run_blocking(request, lambda: people.delete_subject(name)))


@router.get("/api/faces", response_model=FaceListOut, responses=errors(400, 422, 503, 504))
async def list_faces(
    request: Request,
    people: PeopleDep,
    subject: Annotated[
        str | None, Query(max_length=512, description="only this subject's faces", json_schema_extra=NAME_RULE)
    ] = None,
    file: Annotated[str | None, Query(max_length=4096, description="only the faces of this source file")] = None,
    origin: Annotated[Origin | None, Query(description="only faces uploaded, or ingested from disk")] = None,
    no_subject: Annotated[bool, Query(description="only faces without a subject")] = False,
    after: After = None,
    limit: Limit = 100,
) -> FaceListOut:
    """Stored faces, a page at a time (id order), filtered by subject, file, origin, or having no subject."""
    if no_subject and subject is not None:
        raise InvalidRequest("give `subject` or `no_subject`, not both")
    where = FaceFilter(
        subject=subject_name(subject) if subject is not None else None,
        file=file,
        origin=origin,
        no_subject=no_subject,
    )
    page = await run_blocking(request, lambda: people.faces(where, after=after, limit=limit))
    return FaceListOut(faces=[stored_face_out(f) for f in page.faces], next=page.next)


@router.post("/api/faces/{face_id}/subject", response_model=StoredFaceOut, responses=errors(400, 404, 422, 503, 504))
async def set_face_subject(request: Request, face_id: str, body: FaceSubjectIn, people: PeopleDep) -> StoredFaceOut:
    """Move one face to another subject (`{"subject": "Alice"}`), or clear its subject (`{"subject": null}`)."""
    return stored_face_out(await run_blocking(request, lambda: people.set_face_subject(face_id, body.subject)))


@router.get("/api/faces/{face_id}/similar", response_model=SimilarOut, responses=errors(400, 404, 422, 503, 504))
async def similar_faces(
    request: Request,
    face_id: str,
    people: PeopleDep,
    limit: Annotated[int, Query(ge=1, le=100, description="matches at most")] = 12,
) -> SimilarOut:
    """The stored faces nearest to a stored face (itself left out), best first, each marked `same_person` at the
    threshold in force: 'find similar' from a person's face. Feedback on a match: POST /api/feedback with this
    face's id as `query`."""
    return similar_out(await run_blocking(request, lambda: people.similar(face_id, limit=limit)))
