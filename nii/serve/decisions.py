"""Officers' decisions on scans: clear, search, or a confirmed threat.

A scan's first decision is any operator's. Once decided, only a supervisor
may record a different one, which reverses (``supersedes``) the last; the
earlier decision stays in the table and in the audit log, so the history is
never rewritten.

Each decision on an analysed scan is also a DICOS Threat Detection Report of
type OPERATOR (:func:`nii.annotate.tdr.operator_tdr`), built from the scan's
machine TDR and kept in the blob store, so a DICOS workstation sees the
officer's verdict beside the algorithm's.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nii.annotate.tdr import operator_tdr, read_tdr, tdr_bytes
from nii.serve import audit
from nii.serve.auth import Permission, User
from nii.serve.store import Store, decisions, results, scans, utc_now

__all__ = ["THREAT_CATEGORIES", "DecisionError", "Outcome", "decisions_of", "record_decision"]

#: DICOS threat categories (NEMA IIC 1) an officer may confirm.
THREAT_CATEGORIES = ("EXPLOSIVE", "PROHIBITED_ITEM", "CONTRABAND", "ANOMALY", "OTHER")
_MAX_NOTE = 4000


class Outcome(str, Enum):
    CLEAR = "clear"
    SEARCH = "search"
    THREAT = "threat"


class DecisionError(ValueError):
    """A decision was refused; ``status`` is the HTTP status that fits (404, 403, 409, 422)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Decision:
    id: int
    scan_id: str
    decided_at: str
    username: str
    outcome: str
    category: str | None
    note: str | None
    supersedes: int | None
    operator_tdr_sha256: str | None = None  # the officer's DICOS TDR (type OPERATOR), in the blob store

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decisions_of(conn: Connection, scan_id: str) -> list[Decision]:
    """A scan's decisions, oldest first (the last one stands)."""
    rows = conn.execute(sa.select(decisions).where(decisions.c.scan_id == scan_id).order_by(decisions.c.id))
    return [Decision(**row._mapping) for row in rows]


def record_decision(store: Store, conn: Connection, user: User, scan_id: str, outcome: str | Outcome, *,
                    category: str | None = None, note: str | None = None) -> Decision:
    """Record ``user``'s decision on a scan inside ``conn``, with its audit entry and operator TDR.

    When the scan has a result, the decision's operator TDR (DICOS, type
    OPERATOR) is built from the scan's machine TDR, put in the blob store,
    and its sha256 saved in ``operator_tdr_sha256`` with the decision; a
    reversal's TDR refers to the TDR of the decision it supersedes. A scan
    with no result yet (queued, running or failed) has no machine TDR to
    refer to, so a decision on it has no operator TDR (None).

    Returns
    -------
    Decision
        The decision as stored.

    Raises
    ------
    DecisionError
        No such scan (404); not allowed to decide or to reverse (403); a
        "reversal" to the standing decision, or a clear before the scan's
        analysis is done (409); a threat without a category, a category
        without a threat, a reversal without a reason, or a note too long (422).
    ValueError
        The stored machine TDR (or the superseded operator TDR) is not one.
    OSError
        Its blob cannot be read, or the operator TDR's cannot be written.
    """
    if not user.can(Permission.DECIDE):
        raise DecisionError(f"role {user.role} cannot record decisions", 403)
    try:
        outcome = Outcome(outcome)
    except ValueError:
        raise DecisionError(f"outcome must be one of {', '.join(o.value for o in Outcome)}; got {outcome!r}",
                            422) from None
    if outcome is Outcome.THREAT and category not in THREAT_CATEGORIES:
        given = f"category {category!r} is not a DICOS threat category" if category else "a confirmed threat needs a category"
        raise DecisionError(f"{given}: one of {', '.join(THREAT_CATEGORIES)}", 422)
    if outcome is not Outcome.THREAT and category is not None:
        raise DecisionError("a category goes with a confirmed threat only", 422)
    if note is not None and len(note) > _MAX_NOTE:
        raise DecisionError(f"the note has {len(note)} characters; the limit is {_MAX_NOTE}", 422)
    status_now = conn.execute(sa.select(scans.c.status).where(scans.c.scan_id == scan_id)).scalar()
    if status_now is None:
        raise DecisionError(f"no scan {scan_id[:80]}", 404)
    latest = conn.execute(sa.select(decisions.c.id, decisions.c.outcome, decisions.c.category)
                          .where(decisions.c.scan_id == scan_id).order_by(decisions.c.id.desc()).limit(1)).first()
    last = latest.id if latest is not None else None
    if last is not None and not user.can(Permission.REVERSE_DECISION):
        raise DecisionError("this scan already has a decision; only a supervisor can reverse it", 403)
    # A bag is not cleared before the machine has judged it: its alarm would
    # come after the officer's "clear", unseen. Escalating is always allowed.
    if outcome is Outcome.CLEAR and status_now in ("queued", "running"):
        raise DecisionError("the scan is still being analysed; clear it once its result is shown", 409)
    # Stating the standing decision again reverses nothing; counted as a
    # reversal it would inflate the reversal rate supervisors are judged by.
    if latest is not None and (latest.outcome, latest.category) == (outcome.value, category):
        standing = outcome.value + (f"/{category}" if category else "")
        raise DecisionError(f"the scan's decision is already {standing}; a reversal must differ", 409)
    # Overturning a colleague's decision is what an inquiry asks about first.
    if latest is not None and not (note and note.strip()):
        raise DecisionError("a reversal needs its reason in the note", 422)
    values = {"scan_id": scan_id, "decided_at": utc_now(), "username": user.username, "outcome": outcome.value,
              "category": category, "note": note or None, "supersedes": last}
    values["operator_tdr_sha256"] = _store_operator_tdr(store, conn, values)
    new_id = conn.execute(decisions.insert().values(**values)).inserted_primary_key[0]
    conn.execute(scans.update().where(scans.c.scan_id == scan_id).values(revision=store.next_revision(conn)))
    audit.append(store, conn, username=user.username, action="reverse_decision" if last else "decide",
                 target=scan_id, detail={k: v for k, v in values.items() if k != "scan_id"})
    return Decision(id=new_id, **values)


def _store_operator_tdr(store: Store, conn: Connection, decision: dict[str, Any]) -> str | None:
    """Build and store the operator TDR of a decision about to be recorded; its sha256, or None without a result.

    The blob is written before the transaction commits: if it rolls back,
    an unreferenced blob is left, which the content-addressed store allows.
    """
    machine = conn.execute(sa.select(results.c.tdr_sha256).where(results.c.scan_id == decision["scan_id"])).scalar()
    if machine is None:
        return None
    earlier = None
    if decision["supersedes"] is not None:
        earlier = conn.execute(sa.select(decisions.c.operator_tdr_sha256)
                               .where(decisions.c.id == decision["supersedes"])).scalar()
    report = operator_tdr(
        read_tdr(store.blobs.get(machine)), outcome=decision["outcome"], operator=decision["username"],
        # The store keeps UTC; DICOM times are local, as the machine TDR's
        # are, and the DT values carry the offset.
        decided=datetime.fromisoformat(decision["decided_at"]).astimezone(),
        category=decision["category"], note=decision["note"],
        supersedes=read_tdr(store.blobs.get(earlier)) if earlier else None)
    return store.blobs.put(tdr_bytes(report))
