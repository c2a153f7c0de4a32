"""Cases: open one on scans, record findings and references, notes, attachments, status."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, Query, Response, UploadFile, status
from pydantic import BaseModel, Field

from nii.serve import cases as domain
from nii.serve.auth import Permission
from nii.serve.deps import CurrentUser, RowId, RowOffset, ServiceDep, allowed

router = APIRouter(prefix="/api/cases", tags=["cases"])
Viewer = allowed(Permission.VIEW)


class Findings(BaseModel):
    """What the search found, and what ties it to a traveller or consignment."""

    category: Literal["EXPLOSIVE", "PROHIBITED_ITEM", "CONTRABAND", "ANOMALY", "OTHER"] | None = None
    description: str | None = Field(default=None, max_length=4000)
    quantity: str | None = Field(default=None, max_length=64, description="estimated quantity or weight, e.g. 1.2 kg")
    seized: bool | None = None
    bag_tag: str | None = Field(default=None, max_length=64)
    container_number: str | None = Field(default=None, max_length=64)
    declaration_number: str | None = Field(default=None, max_length=64)


class CaseOpen(Findings):
    scan_ids: list[str] = Field(min_length=1, max_length=100)


class CaseChange(Findings):
    status: Literal["open", "referred", "closed"] | None = None


class Note(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class ScanIds(BaseModel):
    scan_ids: list[str] = Field(min_length=1, max_length=100)


def _call(service, function, *args, **kwargs) -> dict[str, Any]:
    """Run one case change in a transaction; refusals become their HTTP status."""
    try:
        with service.store.transaction() as conn:
            case = function(service.store, conn, *args, **kwargs)
    except domain.CaseError as err:
        raise HTTPException(err.status, str(err)) from None
    service.notify_change()
    return case.to_dict()


def _given(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


@router.post("", status_code=status.HTTP_201_CREATED)
def open_case(body: CaseOpen, service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    """Open a case on one or more scans (officers)."""
    fields = _given(body)
    return _call(service, domain.open_case, user, fields.pop("scan_ids"), **fields)


@router.get("")
def list_cases(service: ServiceDep, user: Viewer,
               case_status: Annotated[Literal["open", "referred", "closed"] | None, Query(alias="status")] = None,
               scan_id: Annotated[str | None, Query(max_length=128)] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               offset: RowOffset = 0) -> dict[str, Any]:
    """Cases, newest first; filter by status or by a scan they hold."""
    with service.store.read() as conn:
        return {"cases": domain.list_cases(conn, status=case_status, scan_id=scan_id, limit=limit, offset=offset)}


@router.get("/{case_id}")
def get_case(case_id: RowId, service: ServiceDep, user: Viewer) -> dict[str, Any]:
    """One case with its scans, notes and attachments. Recorded as a view."""
    from nii.serve import audit

    try:
        with service.store.transaction() as conn:
            case = domain.get_case(conn, case_id)
            audit.append(service.store, conn, username=user.username, action="view",
                         target=domain.audit_target(case_id))
    except domain.CaseError as err:
        raise HTTPException(err.status, str(err)) from None
    return case.to_dict()


@router.patch("/{case_id}")
def change_case(case_id: RowId, body: CaseChange, service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    """Change findings, references or status (open, referred, closed)."""
    return _call(service, domain.update_case, user, case_id, **_given(body))


@router.post("/{case_id}/scans")
def add_scans(case_id: RowId, body: ScanIds, service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    return _call(service, domain.add_scans, user, case_id, body.scan_ids)


@router.post("/{case_id}/notes", status_code=status.HTTP_201_CREATED)
def add_note(case_id: RowId, body: Note, service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    return _call(service, domain.add_note, user, case_id, body.text)


@router.post("/{case_id}/attachments", status_code=status.HTTP_201_CREATED)
async def add_attachment(case_id: RowId, file: Annotated[UploadFile, File(description="JPEG, PNG or PDF")],
                         service: ServiceDep, user: CurrentUser) -> dict[str, Any]:
    """Attach a photograph or document from the physical search."""
    data = await file.read(domain.MAX_ATTACHMENT_BYTES + 1)
    return _call(service, domain.add_attachment, user, case_id, file.filename or "attachment", data)


@router.get("/{case_id}/attachments/{attachment_id}")
def get_attachment(case_id: RowId, attachment_id: RowId, service: ServiceDep, user: Viewer) -> Response:
    """An attachment's bytes, as attached."""
    with service.store.read() as conn:
        try:
            case = domain.get_case(conn, case_id)
        except domain.CaseError as err:
            raise HTTPException(err.status, str(err)) from None
    found = next((a for a in case.attachments if a["id"] == attachment_id), None)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"case {case_id} has no attachment {attachment_id}")
    return Response(service.store.blobs.get(found["sha256"]), media_type=found["media_type"],
                    headers={"Content-Disposition": f'attachment; filename="{found["name"]}"'})
