"""Face routes: index a photo's faces, delete faces, thumbnails."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse

from app.api.deps import ServiceDep, SettingsDep, Upload, read_upload, run_blocking
from app.api.schemas import DeleteOut, IndexOut
from app.service import ImageToIndex, content_hash

router = APIRouter(tags=["faces"])


@router.post("/api/faces", response_model=IndexOut, status_code=201)
async def api_index(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                    subject: Annotated[str | None, Form(max_length=256)] = None,
                    source: Annotated[str | None, Form(max_length=4096)] = None) -> IndexOut:
    """Index every face of one image. `file` of each face is `source` if given, else the upload's name."""
    started = time.perf_counter()
    data = await read_upload(file, settings.max_upload_bytes)
    name = source or (file.filename if file else None) or "upload"

    def work() -> IndexOut:
        image = service.decode(data)
        result = service.index([ImageToIndex(image=image, content_hash=content_hash(data), file=name,
                                             subject=subject or None)])[0]
        return IndexOut(file=result.file, ids=result.ids, faces=len(result.ids), replaced=len(result.replaced),
                        took_ms=round((time.perf_counter() - started) * 1e3, 2))

    out = await run_blocking(request, work)
    request.app.state.metrics.faces_indexed += out.faces
    return out


@router.delete("/api/faces/{face_id}", response_model=DeleteOut)
async def api_delete_face(request: Request, face_id: str, service: ServiceDep) -> DeleteOut:
    """Remove one face and its thumbnail."""
    await run_blocking(request, lambda: service.delete_face(face_id))
    return DeleteOut(deleted=[face_id])


@router.delete("/api/faces", response_model=DeleteOut)
async def api_delete_file(request: Request, service: ServiceDep,
                          file: Annotated[str, Query(min_length=1, description="source file of the faces")]
                          ) -> DeleteOut:
    """Remove every face of one source image."""
    return DeleteOut(deleted=await run_blocking(request, lambda: service.delete_file(file)))



@router.get("/thumbs/{face_id}")
async def thumbnail(face_id: str, service: ServiceDep) -> FileResponse:
    """The JPEG crop of a stored face (ids are UUIDs; anything else is 404)."""
    path = service.thumbs.existing(face_id)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
