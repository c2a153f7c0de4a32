"""The append-only, hash-chained audit log.

Every view, decision, submission and configuration change is one entry.
Each entry's hash covers its own fields and the previous entry's hash, so
changing, removing or reordering any entry breaks the chain from there on;
:func:`verify_chain` finds the first broken link (``nii audit verify``).

The chain starts from :data:`GENESIS`. An entry's hash is the sha256 of
the canonical JSON (sorted keys, no spaces) of
``[seq, at, username, action, target, detail, prev_hash]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nii.serve.store import Store, audit, utc_now

__all__ = ["GENESIS", "AuditEntry", "BrokenLink", "append", "entries", "verify_chain", "check_recorded_entry"]

GENESIS = "0" * 64


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    seq: int
    at: str
    username: str | None
    action: str
    target: str | None
    detail: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "detail": json.loads(self.detail)}


@dataclasses.dataclass(frozen=True)
class BrokenLink:
    """Where the chain breaks, and how."""

    seq: int
    reason: str


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _entry_hash(seq: int, at: str, username: str | None, action: str, target: str | None,
                detail: str, prev_hash: str) -> str:
    return hashlib.sha256(_canonical([seq, at, username, action, target, detail, prev_hash]).encode()).hexdigest()


def append(store: Store, conn: Connection, *, username: str | None, action: str, target: str | None = None,
           detail: Mapping[str, Any] | None = None) -> AuditEntry:
    """Add one entry inside the caller's transaction ``conn``.

    Appending in the same transaction as the change it records means a
    decision and its audit line are committed together or not at all.
    """
    store.lock_audit(conn)
    last = conn.execute(sa.select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    at = utc_now()
    body = _canonical(dict(detail or {}))
    digest = _entry_hash(seq, at, username, action, target, body, prev)
    conn.execute(audit.insert().values(seq=seq, at=at, username=username, action=action, target=target,
                                       detail=body, prev_hash=prev, hash=digest))
    return AuditEntry(seq, at, username, action, target, body, prev, digest)


def entries(conn: Connection, *, after: int = 0, limit: int | None = None,
            target: str | None = None) -> list[AuditEntry]:
    """Entries after ``seq`` (oldest first), optionally only those about ``target``."""
    query = sa.select(audit).where(audit.c.seq > after).order_by(audit.c.seq)
    if target is not None:
        query = query.where(audit.c.target == target)
    if limit is not None:
        query = query.limit(limit)
    return [AuditEntry(**row._mapping) for row in conn.execute(query)]


def verify_chain(rows: Iterable[AuditEntry]) -> tuple[int, BrokenLink | None]:
    """Check the chain; return (entries checked, first broken link or None)."""
    expected_prev, expected_seq, checked = GENESIS, 1, 0
    for row in rows:
        if row.seq != expected_seq:
            return checked, BrokenLink(row.seq, f"expected entry {expected_seq} here (entries removed or reordered)")
        if row.prev_hash != expected_prev:
            return checked, BrokenLink(row.seq, "its prev_hash is not the previous entry's hash")
        if _entry_hash(row.seq, row.at, row.username, row.action, row.target, row.detail, row.prev_hash) != row.hash:
            return checked, BrokenLink(row.seq, "its contents do not match its hash (the entry was changed)")
        expected_prev, expected_seq, checked = row.hash, row.seq + 1, checked + 1
    return checked, None


def check_recorded_entry(conn: Connection, seq: int, digest: str) -> str | None:
    """Whether the log still holds entry ``seq`` with the hash ``digest`` that
    something outside it (an evidence package) recorded.

    A log cut off at its end, or rebuilt whole with a fresh chain, verifies
    on its own; only a record kept elsewhere of one of its entries shows it.

    Returns
    -------
    str or None
        None when the log agrees; otherwise one line saying how it differs.
    """
    stored = conn.execute(sa.select(audit.c.hash).where(audit.c.seq == seq)).scalar()
    if stored is None:
        last = conn.execute(sa.select(sa.func.max(audit.c.seq))).scalar() or 0
        return f"the log ends at entry {last}, but entry {seq} was recorded: entries were cut off its end"
    if stored != digest:
        return (f"entry {seq} has hash {stored[:16]}, but {digest[:16]} was recorded: "
                "the log was rebuilt or changed since")
    return None
