"""Cases: from a confirmed alert to a seizure file a prosecutor will accept.

An officer opens a case on one or more scans (usually after confirming a
threat), records what the physical search found (category, description,
estimated quantity or weight, whether it was seized), the references that tie
it to the traveller or the consignment (bag tag, container number,
declaration number), notes, and attachments such as photographs. A case is
``open``, ``referred`` (handed to investigators or a prosecutor) or
``closed``; a closed case changes only when a supervisor reopens it.

Every change is one audit entry in the same transaction, with the case as
its target (``case:<id>``), so the audit excerpt of a case is its history.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nii.serve import audit
from nii.serve.auth import Permission, User
from nii.serve.decisions import THREAT_CATEGORIES
from nii.serve.intake import safe_name
from nii.serve.store import Store, case_attachments, case_notes, case_scans, cases, results, scans, utc_now

__all__ = ["ATTACHMENT_SUFFIXES", "ATTACHMENT_TYPES", "Case", "CaseError", "CaseStatus", "add_attachment", "add_note", "add_scans",
           "audit_target", "get_case", "list_cases", "open_case", "update_case"]

#: What may be attached, by the bytes a file starts with (never by its name).
ATTACHMENT_TYPES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"%PDF-": "application/pdf",
}
#: File name suffixes of each attachment type (the first is the one given).
ATTACHMENT_SUFFIXES = {"image/jpeg": (".jpg", ".jpeg"), "image/png": (".png",), "application/pdf": (".pdf",)}
MAX_ATTACHMENT_BYTES = 50 << 20
_TEXT_LIMITS = {"description": 4000, "quantity": 64, "bag_tag": 64, "container_number": 64,
                "declaration_number": 64, "note": 4000}
FINDINGS = ("category", "description", "quantity", "seized")
REFERENCES = ("bag_tag", "container_number", "declaration_number")


class CaseStatus(str, Enum):
    OPEN = "open"
    REFERRED = "referred"
    CLOSED = "closed"


class CaseError(ValueError):
    """A case change was refused; ``status`` is the HTTP status that fits (403, 404, 409, 413, 422)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Case:
    """One case as stored, with its scans, notes and attachments."""

    case_id: int
    opened_at: str
    opened_by: str
    status: str
    updated_at: str
    category: str | None
    description: str | None
    quantity: str | None
    seized: bool
    bag_tag: str | None
    container_number: str | None
    declaration_number: str | None
    scan_ids: tuple[str, ...] = ()
    notes: tuple[dict[str, Any], ...] = ()
    attachments: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "scan_ids": list(self.scan_ids), "notes": list(self.notes),
                "attachments": list(self.attachments)}


def audit_target(case_id: int) -> str:
    """How audit entries name a case."""
    return f"case:{case_id}"


def _require_officer(user: User) -> None:
    if not user.can(Permission.DECIDE):
        raise CaseError(f"role {user.role} cannot open or change cases", 403)


def _checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check findings and references; return them as the table stores them."""
    unknown = sorted(set(fields) - set(FINDINGS) - set(REFERENCES))
    if unknown:
        raise CaseError(f"unknown case fields {', '.join(unknown)}", 422)
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "seized":
            if not isinstance(value, bool):
                raise CaseError("seized must be true or false", 422)
        elif key == "category":
            if value is not None and value not in THREAT_CATEGORIES:
                raise CaseError(f"category must be one of {', '.join(THREAT_CATEGORIES)}", 422)
        elif value is not None:
            if not isinstance(value, str):
                raise CaseError(f"{key} must be text", 422)
            value = value.strip() or None
            if value and len(value) > _TEXT_LIMITS[key]:
                raise CaseError(f"{key} has {len(value)} characters; the limit is {_TEXT_LIMITS[key]}", 422)
        values[key] = value
    return values


def _scan_references(conn: Connection, store: Store, scan_ids: Sequence[str]) -> dict[str, str]:
    """Bag tag and container number the scans themselves carry (scanner metadata), as defaults."""
    found: dict[str, str] = {}
    rows = conn.execute(sa.select(results.c.result_sha256).where(results.c.scan_id.in_(scan_ids))).scalars()
    for digest in rows:
        metadata = json.loads(store.blobs.get(digest))["scan"].get("metadata") or {}
        for key in ("bag_tag", "container_number"):
            if metadata.get(key) and key not in found:
                found[key] = str(metadata[key])[:64]
    return found


def _check_scans(conn: Connection, scan_ids: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(scan_ids))
    if not unique:
        raise CaseError("a case needs at least one scan", 422)
    known = set(conn.execute(sa.select(scans.c.scan_id).where(scans.c.scan_id.in_(unique))).scalars())
    missing = [s for s in unique if s not in known]
    if missing:
        raise CaseError(f"no scan {missing[0][:80]}", 404)
    return unique


def open_case(store: Store, conn: Connection, user: User, scan_ids: Sequence[str], **fields: Any) -> Case:
    """Open a case on ``scan_ids`` with any findings and references given.

    Bag tag and container number default to what the scans' metadata carry.

    Raises
    ------
    CaseError
        Not an officer (403), an unknown scan (404), or a bad field (422).
    """
    _require_officer(user)
    values = _checked(fields)
    scan_ids = _check_scans(conn, scan_ids)
    for key, value in _scan_references(conn, store, scan_ids).items():
        values.setdefault(key, value)
    now = utc_now()
    case_id = conn.execute(cases.insert().values(
        opened_at=now, opened_by=user.username, status=CaseStatus.OPEN.value, updated_at=now,
        **{"seized": False, **values})).inserted_primary_key[0]
    conn.execute(case_scans.insert(), [{"case_id": case_id, "scan_id": s} for s in scan_ids])
    audit.append(store, conn, username=user.username, action="case_open", target=audit_target(case_id),
                 detail={"scans": scan_ids, **values})
    return get_case(conn, case_id)


def update_case(store: Store, conn: Connection, user: User, case_id: int, *, status: str | None = None,
                **fields: Any) -> Case:
    """Change a case's findings, references or status.

    Raises
    ------
    CaseError
        Not an officer (403), no such case (404), a closed case changed by
        anyone but a supervisor reopening it (409), or a bad value (422).
    """
    _require_officer(user)
    current = get_case(conn, case_id)
    values = _checked(fields)
    if status is not None:
        try:
            values["status"] = CaseStatus(status).value
        except ValueError:
            raise CaseError(f"status must be one of {', '.join(s.value for s in CaseStatus)}", 422) from None
    if current.status == CaseStatus.CLOSED.value:
        reopening = values.get("status") in (CaseStatus.OPEN.value, CaseStatus.REFERRED.value)
        if not (reopening and user.can(Permission.REVERSE_DECISION)):
            raise CaseError(_CLOSED, 409)
    changed = {k: v for k, v in values.items() if getattr(current, k) != v}
    if not changed:
        return current
    conn.execute(cases.update().where(cases.c.case_id == case_id).values(updated_at=utc_now(), **changed))
    audit.append(store, conn, username=user.username, action="case_update", target=audit_target(case_id),
                 detail={"changed": changed, "was": {k: getattr(current, k) for k in changed}})
    return get_case(conn, case_id)


def add_scans(store: Store, conn: Connection, user: User, case_id: int, scan_ids: Sequence[str]) -> Case:
    """Add scans to a case (a second scan of the same bag, the rest of a consignment)."""
    _require_officer(user)
    current = _changeable(conn, case_id)
    new = [s for s in _check_scans(conn, scan_ids) if s not in current.scan_ids]
    if new:
        conn.execute(case_scans.insert(), [{"case_id": case_id, "scan_id": s} for s in new])
        conn.execute(cases.update().where(cases.c.case_id == case_id).values(updated_at=utc_now()))
        audit.append(store, conn, username=user.username, action="case_add_scans", target=audit_target(case_id),
                     detail={"scans": new})
    return get_case(conn, case_id)


def add_note(store: Store, conn: Connection, user: User, case_id: int, text: str) -> Case:
    """Append a note; notes are never edited, only added."""
    _require_officer(user)
    _changeable(conn, case_id)
    text = _checked({"description": text}).get("description")  # same rules as a description
    if not text:
        raise CaseError("the note is empty", 422)
    at = utc_now()
    conn.execute(case_notes.insert().values(case_id=case_id, at=at, username=user.username, text=text))
    conn.execute(cases.update().where(cases.c.case_id == case_id).values(updated_at=at))
    audit.append(store, conn, username=user.username, action="case_note", target=audit_target(case_id),
                 detail={"text": text})
    return get_case(conn, case_id)


def add_attachment(store: Store, conn: Connection, user: User, case_id: int, name: str, data: bytes) -> Case:
    """Attach a photograph (JPEG, PNG) or a document (PDF) from the physical search.

    The type is read from the bytes; the name is only a label, made safe.
    """
    _require_officer(user)
    _changeable(conn, case_id)
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise CaseError(f"the attachment has {len(data)} bytes; the limit is {MAX_ATTACHMENT_BYTES}", 413)
    media_type = next((t for magic, t in ATTACHMENT_TYPES.items() if data.startswith(magic)), None)
    if media_type is None:
        raise CaseError("attachments must be JPEG or PNG photographs or PDF documents", 422)
    digest = store.blobs.put(data)
    label = safe_name(name, 0)
    conn.execute(case_attachments.insert().values(case_id=case_id, added_at=utc_now(), added_by=user.username,
                                                  name=label, media_type=media_type, sha256=digest,
                                                  size=len(data)))
    conn.execute(cases.update().where(cases.c.case_id == case_id).values(updated_at=utc_now()))
    audit.append(store, conn, username=user.username, action="case_attachment", target=audit_target(case_id),
                 detail={"name": label, "sha256": digest, "size": len(data), "media_type": media_type})
    return get_case(conn, case_id)


_CLOSED = "the case is closed; only a supervisor can reopen it"


def _changeable(conn: Connection, case_id: int) -> Case:
    """The case, unless it is closed (409): scans, notes and attachments wait for a reopening."""
    current = get_case(conn, case_id)
    if current.status == CaseStatus.CLOSED.value:
        raise CaseError(_CLOSED, 409)
    return current


def get_case(conn: Connection, case_id: int) -> Case:
    """One case with its scans, notes and attachments.

    Raises
    ------
    CaseError
        No such case (404).
    """
    row = conn.execute(sa.select(cases).where(cases.c.case_id == case_id)).first()
    if row is None:
        raise CaseError(f"no case {case_id}", 404)
    scan_ids = tuple(conn.execute(sa.select(case_scans.c.scan_id).where(case_scans.c.case_id == case_id)
                                  .order_by(case_scans.c.scan_id)).scalars())
    notes = tuple(dict(r._mapping) for r in conn.execute(
        sa.select(case_notes.c.id, case_notes.c.at, case_notes.c.username, case_notes.c.text)
        .where(case_notes.c.case_id == case_id).order_by(case_notes.c.id)))
    attachments = tuple(dict(r._mapping) for r in conn.execute(
        sa.select(case_attachments.c.id, case_attachments.c.added_at, case_attachments.c.added_by,
                  case_attachments.c.name, case_attachments.c.media_type, case_attachments.c.sha256,
                  case_attachments.c.size)
        .where(case_attachments.c.case_id == case_id).order_by(case_attachments.c.id)))
    return Case(**{**row._mapping, "seized": bool(row.seized)}, scan_ids=scan_ids, notes=notes,
                attachments=attachments)


def list_cases(conn: Connection, *, status: str | None = None, scan_id: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Cases, newest first, without notes and attachments."""
    query = sa.select(cases).order_by(cases.c.case_id.desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(cases.c.status == status)
    if scan_id is not None:
        query = query.where(cases.c.case_id.in_(sa.select(case_scans.c.case_id).where(case_scans.c.scan_id == scan_id)))
    return [{**row._mapping, "seized": bool(row.seized)} for row in conn.execute(query)]
