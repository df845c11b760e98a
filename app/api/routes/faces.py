"""Face routes: index a photo's faces, delete faces, thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse

from app.api.contract import UPLOAD, errors
from app.api.deps import ServiceDep, Upload
from app.api.schemas import DeleteOut, IndexOut, index_out
from app.api.upload import handle_uploads, run_blocking
from app.engine import Ticket
from app.errors import InvalidRequest
from app.people import People
from app.service import ImageToIndex, IndexedImage, content_hash
from app.store import Origin, PointQuery

router = APIRouter(tags=["faces"])


@router.post("/api/faces", response_model=IndexOut, status_code=201, responses=errors(*UPLOAD, 507))
async def api_index(
    request: Request,
    service: ServiceDep,
    file: Upload = None,
    subject: Annotated[str | None, Form(max_length=256)] = None,
    source: Annotated[
        str | None,
        Form(
            max_length=4096,
            description=(
                "your key for this photo (e.g. its path in your system); shown as `file` of each face "
                "(default: the upload's name)"
            ),
        ),
    ] = None,
    replace: Annotated[
        bool,
        Form(
            description=(
                "remove the faces indexed earlier under the same `source` that this photo no longer has; "
                "needs `source`. Without it an upload never removes any face"
            )
        ),
    ] = False,
) -> IndexOut:
    """Index every face of one image. The same bytes indexed again keep the same face ids (nothing is
    duplicated; subject and source become those of the latest upload)."""
    if replace and not source:
        raise InvalidRequest("replace=true needs `source`: the key whose earlier faces this photo replaces")
    name = source or (file.filename if file else None) or "upload"

    def work(uploads: list[bytes], ticket: Ticket | None) -> IndexedImage:
        data = uploads[0]
        item = ImageToIndex(
            image=service.decode(data),
            content_hash=content_hash(data),
            file=name,
            subject=subject or None,
            origin=Origin.UPLOAD,
            replace=replace,
        )
        return service.index([item], ticket=ticket)[0]

    done = await handle_uploads(request, service, [file], work)
    result = done.value
    request.app.state.metrics.faces_indexed.inc(len(result.ids))
    return index_out(result, done.took_ms)


@router.delete("/api/faces/{face_id}", response_model=DeleteOut, responses=errors(404, 422, 503, 504))
async def api_delete_face(request: Request, face_id: str, service: ServiceDep) -> DeleteOut:
    """Remove one face and its thumbnail (and the feedback about it). Sent again, it finishes an erasure cut short
    (a crash) and answers as the first did (for 24 hours); 404 only for a face never stored."""
    await run_blocking(request, lambda: service.delete_face(face_id))
    await forget_feedback(request, [face_id])
    return DeleteOut(deleted=[face_id])


@router.delete("/api/faces", response_model=DeleteOut, responses=errors(400, 404, 422, 503, 504))
async def api_delete_faces(
    request: Request,
    service: ServiceDep,
    file: Annotated[str | None, Query(min_length=1, description="the source file of the faces")] = None,
    subject: Annotated[str | None, Query(min_length=1, description="the subject of the faces")] = None,
) -> DeleteOut:
    """Remove every face of one source image (`file`) or of one person (`subject`), with their thumbnails and the
    feedback about them. Crash-safe: recorded before it starts and finished at the next start if cut short; sent
    again, it finishes one cut short and answers with the faces erased (for 24 hours after)."""
    if (file is None) == (subject is None):
        raise InvalidRequest("give exactly one of `file` or `subject`: the faces to delete")
    query = PointQuery(file=file, subject=subject)
    deleted = await run_blocking(request, lambda: service.delete_where(query))
    await forget_feedback(request, deleted, subject)
    return DeleteOut(deleted=deleted)


async def forget_feedback(request: Request, ids: list[str], subject: str | None = None) -> None:
    """Erasure takes the feedback about the faces with it (app.people; in an HTTP worker, the core's)."""
    people: People | None = request.app.state.people
    if people is not None:
        await run_blocking(request, lambda: people.forget(ids, subject=subject))


@router.get(
    "/thumbs/{face_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "a JPEG"},
        **errors(404, 422, 503, 504),
    },
)
async def thumbnail(request: Request, face_id: str, service: ServiceDep) -> FileResponse:
    """The JPEG crop of a stored face (ids are UUIDs; anything else, or an erased face, is 404). Not cached by
    shared caches, so that an erased face is gone at once."""
    path = await run_blocking(request, lambda: service.thumbnail(face_id))
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})
