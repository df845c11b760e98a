"""Feedback routes: a person says whether a match is the same person as the query face; listed, exported, and
used to calibrate the threshold."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.contract import errors
from app.api.deps import PeopleDep
from app.api.people_schemas import (
    FeedbackCalibrationOut,
    FeedbackIn,
    FeedbackListOut,
    FeedbackOut,
    feedback_out,
)
from app.api.upload import run_blocking
from app.calibration.report import calibration_figures
from app.people import People
from app.statedb import MAX_INTEGER

router = APIRouter(tags=["feedback"])
EXPORT_PAGE = 1000


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


@router.post("/api/feedback", response_model=FeedbackOut, status_code=201, responses=errors(400, 404, 422, 503, 504))
async def add_feedback(request: Request, body: FeedbackIn, people: PeopleDep) -> FeedbackOut:
    """Record whether `match_id` is the same person as the query face (a stored face's id, or the `ref` of a face
    of a search answer), with the API key that sent it. 404 when either face is unknown or was erased."""
    key = getattr(request.state, "key", None)
    record = await run_blocking(
        request,
        lambda: people.add_feedback(query=body.query, match_id=body.match_id, same_person=body.same_person, key=key),
    )
    return feedback_out(record)


@router.get("/api/feedback", response_model=FeedbackListOut, responses=errors(422, 503, 504))
async def list_feedback(
    request: Request,
    people: PeopleDep,
    after: Annotated[int, Query(ge=0, le=MAX_INTEGER, description="the `next` of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FeedbackListOut:
    """The feedback in the order it was given, a page at a time."""

    def work() -> FeedbackListOut:
        rows = people.feedback(after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return FeedbackListOut(
            feedback=[feedback_out(r) for r in rows],
            total=people.feedback_count(),
            next=rows[-1].id if more and rows else None,
        )

    return await run_blocking(request, work)


def _export(people: People, fmt: ExportFormat) -> Iterator[str]:
    fields = list(FeedbackOut.model_fields)
    if fmt is ExportFormat.CSV:
        yield ",".join(fields) + "\r\n"
    after = 0
    while rows := people.feedback(after=after, limit=EXPORT_PAGE):
        after = rows[-1].id
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        for row in rows:
            data = feedback_out(row).model_dump()
            if fmt is ExportFormat.CSV:
                writer.writerow(data)
            else:
                buffer.write(json.dumps(data) + "\n")
        yield buffer.getvalue()


@router.get(
    "/api/feedback/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, **errors(422, 503)},
)
async def export_feedback(
    people: PeopleDep, format: Annotated[ExportFormat, Query(description="csv or jsonl")] = ExportFormat.CSV
) -> StreamingResponse:
    """All feedback as CSV (with a header) or JSON lines, read a page at a time."""
    media = "text/csv" if format is ExportFormat.CSV else "application/x-ndjson"
    return StreamingResponse(
        _export(people, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="feedback.{format.value}"'},
    )


@router.post("/api/feedback/calibrate", response_model=FeedbackCalibrationOut, responses=errors(400, 422, 503, 504))
async def calibrate_feedback(
    request: Request,
    people: PeopleDep,
    far: Annotated[float, Query(gt=0, lt=1, description="the false accept rate to choose the threshold at")] = 1e-3,
    apply: Annotated[bool, Query(description="store the threshold with the collection (in force at once)")] = False,
) -> FeedbackCalibrationOut:
    """The threshold measured on the stored feedback (the scores from the stored vectors): what
    `python -m app.calibrate --feedback` runs when the service owns the embedded store."""
    result, labelled = await run_blocking(request, lambda: people.calibrate_feedback(far=far, apply=apply))
    return FeedbackCalibrationOut(**calibration_figures(result, far=far, apply=apply), left_out=len(labelled.left_out))
