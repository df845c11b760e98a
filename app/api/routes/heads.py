"""Classifier-head routes: analyze a photo with heads, list heads, one head's details."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request

from app.api.contract import UPLOAD, errors
from app.api.deps import HeadsQuery, ServiceDep, Upload
from app.api.schemas import AnalyzeOut, HeadDetailOut, HeadsOut, analyzed_out, head_out
from app.api.upload import handle_uploads
from app.engine import Ticket
from app.errors import InvalidRequest, NoSuchHead, NotFound
from app.service import AnalyzedFace

router = APIRouter(tags=["heads"])


@router.post("/api/analyze", response_model=AnalyzeOut, responses=errors(*UPLOAD))
async def api_analyze(
    request: Request,
    service: ServiceDep,
    file: Upload = None,
    heads: HeadsQuery = None,
    heads_form: Annotated[
        str | None, Form(alias="heads", max_length=512, description="the same as the query parameter")
    ] = None,
) -> AnalyzeOut:
    """Every face in the photo (box, detector score, 5 keypoints) with the answers of the classifier heads: the
    default heads (HEADS) unless `heads` names others (as a query parameter or a form field); `heads=` (empty)
    runs none. Nothing is searched or stored."""
    if heads is not None and heads_form is not None and heads != heads_form:
        raise InvalidRequest("give `heads` once: as a query parameter or as a form field, not both")
    chosen = service.select_heads(heads if heads is not None else heads_form)

    def work(uploads: list[bytes], ticket: Ticket | None) -> list[AnalyzedFace]:
        return service.analyze([service.decode(uploads[0])], heads=chosen, ticket=ticket)[0]

    done = await handle_uploads(request, service, [file], work)
    return AnalyzeOut(
        faces=[analyzed_out(f) for f in done.value],
        heads=[h.name for h in chosen],
        took_ms=done.took_ms,
        model=service.model_name,
    )


@router.get("/api/heads", response_model=HeadsOut, responses=errors())
async def api_heads(service: ServiceDep) -> HeadsOut:
    """Every classifier head with its spec; unavailable ones (e.g. genderage without genderage.onnx in the
    model pack) say why."""
    entries = service.heads.listings()
    return HeadsOut(heads=[head_out(e) for e in entries], default=[e.spec.name for e in entries if e.default])


@router.get("/api/heads/{name}", response_model=HeadDetailOut, responses=errors(404, 422))
async def api_head(name: str, service: ServiceDep) -> HeadDetailOut:
    """One head: its spec, its classes (`labels`) and its loaded model (input shape, parameter count, ...)."""
    try:
        entry = service.heads.listing(name)
    except NoSuchHead as exc:
        raise NotFound(exc.message) from exc
    labels = list(entry.spec.labels) or list(entry.spec.output_keys)
    return HeadDetailOut(
        **head_out(entry).model_dump(exclude={"spec"}),
        spec=entry.spec,
        labels=labels,
        model_info=entry.head.info if entry.head is not None else None,
    )
