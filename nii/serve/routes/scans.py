"""Scans: submit, list, read results and images, record decisions, follow live."""

from __future__ import annotations

import asyncio
import json
import re
import time
import warnings
from datetime import datetime
from typing import Annotated, Any, Literal

import cv2
import sqlalchemy as sa
from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from nii.annotate.view import CT_AXES, operator_view
from nii.calibrate.render import TOOLS
from nii.ingest.image import encode_image
from nii.serve import audit
from nii.serve.auth import Permission, user_for_token
from nii.serve.decisions import DecisionError, decisions_of, record_decision
from nii.serve.deps import CurrentUser, RowId, RowOffset, ServiceDep, allowed, bearer_or_cookie
from nii.serve.intake import IntakeError, Upload
from nii.serve.store import decisions, results, scans

# How often a live stream checks that its session still holds.
_SESSION_CHECK_S = 2.0
# A Last-Event-ID the revision column can hold (BIGINT); anything else
# starts the stream from now.
_REVISION = re.compile(r"[0-9]{1,18}")
# A decimal number, as a window bound: what float() takes, nothing else.
_NUMBER = r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)"

router = APIRouter(prefix="/api/scans", tags=["scans"])
Viewer = allowed(Permission.VIEW)
Submitter = allowed(Permission.SUBMIT)

_OUTPUTS = {
    "result.json": ("result_sha256", "application/json"),
    "annotated.png": ("annotated_sha256", "image/png"),
    "tdr.dcm": ("tdr_sha256", "application/dicom"),
}


class Accepted(BaseModel):
    scan_id: str
    status: str
    duplicate: bool


class ScanPublic(BaseModel):
    scan_id: str
    received_at: str
    source: str
    kind: str | None
    scanner_id: str | None
    acquired_at: str | None
    status: str
    decision: str | None = Field(description="the machine's ALARM or CLEAR")
    alert_count: int | None
    alarm_count: int | None
    error: str | None
    finished_at: str | None
    officer_decision: str | None = Field(description="the standing officer decision: clear, search or threat")
    revision: int


class ScanList(BaseModel):
    scans: list[ScanPublic]
    total: int


class DecisionIn(BaseModel):
    outcome: Literal["clear", "search", "threat"]
    category: str | None = None
    note: str | None = Field(default=None, max_length=4000)


def _latest_decision():
    latest = sa.select(decisions.c.scan_id, sa.func.max(decisions.c.id).label("id")).group_by(
        decisions.c.scan_id).subquery()
    return sa.select(latest.c.scan_id, decisions.c.outcome).join(decisions, decisions.c.id == latest.c.id).subquery()


def _scan_rows(conn: sa.Connection, where: list[Any], *, limit: int | None = None, offset: int = 0,
               order=None) -> list[ScanPublic]:
    officer = _latest_decision()
    query = (sa.select(scans, officer.c.outcome.label("officer_decision"))
             .outerjoin(officer, officer.c.scan_id == scans.c.scan_id).where(*where)
             .order_by(*(order if order is not None else (scans.c.received_at.desc(), scans.c.scan_id))))
    if limit is not None:
        query = query.limit(limit).offset(offset)
    columns = ScanPublic.model_fields
    return [ScanPublic(**{k: v for k, v in row._mapping.items() if k in columns}) for row in conn.execute(query)]


@router.post("", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
async def submit_scan(files: Annotated[list[UploadFile], File(description="one scan: a file, raw + sidecar, or CT slices")],
                      service: ServiceDep, user: Submitter, response: Response) -> Accepted:
    """Submit one scan. The same scan sent again answers 200 with ``duplicate: true``."""
    uploads = [Upload(f.filename or "", await f.read()) for f in files]
    try:
        accepted = await asyncio.to_thread(service.submit, uploads, source="http", username=user.username)
    except IntakeError as err:
        code = (status.HTTP_413_CONTENT_TOO_LARGE if err.too_large else status.HTTP_409_CONFLICT if err.conflict
                else status.HTTP_422_UNPROCESSABLE_CONTENT)
        raise HTTPException(code, str(err)) from None
    if accepted.duplicate:
        response.status_code = status.HTTP_200_OK
    return Accepted(scan_id=accepted.scan_id, status=accepted.status, duplicate=accepted.duplicate)


def _instant(name: str, value: str) -> str:
    """A date or time from the query as stored times are written; 422 for one no calendar has (2026-99-99)."""
    text = value.replace(" ", "T")
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: no such date or time: {value[:40]!r}") from None
    return text


@router.get("", response_model=ScanList)
def list_scans(service: ServiceDep, user: Viewer,
               decision: Literal["ALARM", "CLEAR"] | None = None,
               scan_status: Annotated[Literal["queued", "running", "done", "failed"] | None, Query(alias="status")] = None,
               scanner: Annotated[str | None, Query(max_length=64)] = None,
               since: Annotated[str | None, Query(description="received at or after (ISO 8601 date or time, UTC)",
                                                  pattern=r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+Z?)?$")] = None,
               until: Annotated[str | None, Query(description="received before (ISO 8601, UTC)",
                                                  pattern=r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+Z?)?$")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               offset: RowOffset = 0) -> ScanList:
    """Scans, newest first, filtered by machine decision, status, scanner and date."""
    where = []
    if decision:
        where.append(scans.c.decision == decision)
    if scan_status:
        where.append(scans.c.status == scan_status)
    if scanner:
        where.append(scans.c.scanner_id == scanner)
    if since:
        where.append(scans.c.received_at >= _instant("since", since))
    if until:
        where.append(scans.c.received_at < _instant("until", until))
    with service.store.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(scans).where(*where)).scalar()
        rows = _scan_rows(conn, where, limit=limit, offset=offset)
    return ScanList(scans=rows, total=total)


@router.get("/events")
async def scan_events(request: Request, service: ServiceDep, user: Viewer) -> StreamingResponse:
    """Server-sent events: one ``scan`` event (a ScanPublic) each time a scan changes."""
    last_id = request.headers.get("last-event-id", "")

    def changes(after: int | None) -> tuple[int, list[ScanPublic]]:
        with service.store.read() as conn:
            if after is None:
                return int(conn.execute(sa.select(sa.func.max(scans.c.revision))).scalar() or 0), []
            rows = _scan_rows(conn, [scans.c.revision > after], limit=200, order=(scans.c.revision,))
        return (rows[-1].revision if rows else after), rows

    # The cursor is read before the response starts: the browser's "open" (on
    # which the viewer reloads its list) then comes after it, so a change is
    # either in that reload or sent as an event, never lost between the two.
    start = int(last_id) if _REVISION.fullmatch(last_id) else (await asyncio.to_thread(changes, None))[0]

    token = bearer_or_cookie(request)

    def session_ended() -> bool:
        with service.store.read() as conn:
            return user_for_token(conn, token) is None

    async def stream():
        cursor = start
        yield "retry: 2000\n\n"
        quiet_since = checked_at = time.monotonic()
        while not await request.is_disconnected():
            # A logout or an expiry elsewhere ends the stream: scan metadata
            # must not keep flowing to a tab whose session was revoked.
            if time.monotonic() - checked_at > _SESSION_CHECK_S:
                if await asyncio.to_thread(session_ended):
                    return
                checked_at = time.monotonic()
            seen = service.change_count
            cursor, rows = await asyncio.to_thread(changes, cursor)
            for row in rows:
                yield f"id: {row.revision}\nevent: scan\ndata: {row.model_dump_json()}\n\n"
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 15:  # keeps proxies from closing an idle stream
                yield ": still here\n\n"
                quiet_since = time.monotonic()
            # Woken at once by a change in this process; another process's
            # (a second server on the same PostgreSQL) shows within a second.
            await asyncio.to_thread(service.wait_for_change, seen, 1.0)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{scan_id}")
def get_scan(scan_id: str, service: ServiceDep, user: Viewer) -> dict[str, Any]:
    """One scan: its row, its result JSON (when analysed) and its decisions. Recorded as a view."""
    with service.store.transaction() as conn:
        rows = _scan_rows(conn, [scans.c.scan_id == scan_id])
        if not rows:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no scan {scan_id[:80]}")
        stored = conn.execute(sa.select(results.c.result_sha256).where(results.c.scan_id == scan_id)).scalar()
        history = [d.to_dict() for d in decisions_of(conn, scan_id)]
        audit.append(service.store, conn, username=user.username, action="view", target=scan_id)
    result = json.loads(service.store.blobs.get(stored)) if stored else None
    return {"scan": rows[0].model_dump(), "result": result, "decisions": history}


@router.get("/{scan_id}/image", responses={200: {"content": {"image/png": {}}}})
async def scan_image(scan_id: str, service: ServiceDep, user: Viewer,
                     tool: str = "colour",
                     window: Annotated[str | None, Query(pattern=rf"^{_NUMBER},{_NUMBER}$",
                                                         description="lo,hi: attenuation, or HU for CT")] = None,
                     axis: str = "axial",
                     index: Annotated[int | None, Query(ge=0, description="CT slice; none for the MIP")] = None) -> Response:
    """The scan through one rendering tool, as PNG, without boxes (the viewer draws those)."""
    if tool not in TOOLS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tool must be one of {', '.join(TOOLS)}")
    if axis not in CT_AXES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"axis must be one of {', '.join(CT_AXES)}")
    bounds = tuple(float(v) for v in window.split(",")) if window else None
    if _scan_status(service, scan_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no scan {scan_id[:80]}")

    def draw() -> bytes:
        calibrated = service.calibrated(scan_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a degenerate window shows grey, as documented
            image = operator_view(calibrated, tool=tool, window=bounds, axis=axis, index=index)
        return encode_image(image, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])

    try:
        png = await asyncio.to_thread(draw)
    except ValueError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, " ".join(str(err).split())) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _scan_status(service, scan_id: str) -> str | None:
    with service.store.read() as conn:
        return conn.execute(sa.select(scans.c.status).where(scans.c.scan_id == scan_id)).scalar()


@router.get("/{scan_id}/{output}", responses={200: {"content": {"application/json": {}, "image/png": {},
                                                                 "application/dicom": {}}}})
def scan_output(scan_id: str, output: Literal["result.json", "annotated.png", "tdr.dcm"], service: ServiceDep,
                user: Viewer) -> Response:
    """The pipeline's outputs: result JSON, annotated PNG, or the machine TDR (DICOS). Recorded as a view."""
    column, media_type = _OUTPUTS[output]
    with service.store.transaction() as conn:
        digest = conn.execute(sa.select(results.c[column]).where(results.c.scan_id == scan_id)).scalar()
        if digest is not None:
            audit.append(service.store, conn, username=user.username, action="download", target=scan_id,
                         detail={"file": output})
    if digest is None:
        state = _scan_status(service, scan_id)
        if state is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no scan {scan_id[:80]}")
        raise HTTPException(status.HTTP_409_CONFLICT, f"scan {scan_id[:80]} has no result ({state})")
    return Response(service.store.blobs.get(digest), media_type=media_type)


@router.post("/{scan_id}/decisions", status_code=status.HTTP_201_CREATED)
def post_decision(scan_id: str, body: DecisionIn, service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    """Record the officer's decision; a second one is a supervisor's reversal."""
    try:
        with service.store.transaction() as conn:
            decision = record_decision(service.store, conn, user, scan_id, body.outcome,
                                       category=body.category, note=body.note)
    except DecisionError as err:
        raise HTTPException(err.status, str(err)) from None
    service.counters[f"officer_{decision.outcome}"] += 1
    service.notify_change()
    service.announce_decision(decision)
    return decision.to_dict()


@router.get("/{scan_id}/decisions/{decision_id}/tdr.dcm", responses={200: {"content": {"application/dicom": {}}}})
def decision_tdr(scan_id: str, decision_id: RowId, service: ServiceDep, user: Viewer) -> Response:
    """The officer's TDR of one decision (DICOS, type OPERATOR). Recorded as a download."""
    with service.store.transaction() as conn:
        digest = conn.execute(sa.select(decisions.c.operator_tdr_sha256).where(
            decisions.c.id == decision_id, decisions.c.scan_id == scan_id)).scalar()
        if digest is not None:
            audit.append(service.store, conn, username=user.username, action="download", target=scan_id,
                         detail={"file": "tdr.dcm", "decision": decision_id})
    if digest is None:  # no such decision on this scan, or one made before the scan had a result
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"decision {decision_id} on scan {scan_id[:80]} has no TDR")
    return Response(service.store.blobs.get(digest), media_type="application/dicom")
