"""Users, roles, passwords and tokens.

Passwords are hashed with Argon2id (``argon2-cffi``). A login gives an
opaque random token; only its sha256 is stored, so a copy of the database
gives no one a session. The same token works as a bearer token for API
clients (``POST /api/token``) and as the viewer's session cookie.

Roles and what they may do (:data:`ROLE_PERMISSIONS`):

================  ==========================================================
operator          view scans, submit scans, record a decision on a scan
supervisor        all an operator may, reverse a decision, read the audit log
                  and the operational reports
model_developer   view scans and results, change alarm thresholds
admin             manage users, change thresholds, read the audit log and the
                  reports, view and submit scans; not decide (decisions are
                  officers' work)
================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone
from enum import Enum

import argon2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nii.serve.store import Store, tokens, users, utc_now

__all__ = ["Permission", "ROLES", "ROLE_PERMISSIONS", "AuthError", "User", "add_user", "authenticate",
           "issue_token", "revoke_token", "user_for_token"]


class Permission(str, Enum):
    VIEW = "view"
    SUBMIT = "submit"
    DECIDE = "decide"
    REVERSE_DECISION = "reverse_decision"
    READ_AUDIT = "read_audit"
    READ_REPORTS = "read_reports"
    CHANGE_THRESHOLDS = "change_thresholds"
    MANAGE_USERS = "manage_users"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "operator": frozenset({Permission.VIEW, Permission.SUBMIT, Permission.DECIDE}),
    "supervisor": frozenset({Permission.VIEW, Permission.SUBMIT, Permission.DECIDE, Permission.REVERSE_DECISION,
                             Permission.READ_AUDIT, Permission.READ_REPORTS}),
    "model_developer": frozenset({Permission.VIEW, Permission.CHANGE_THRESHOLDS}),
    # Decisions are officers' work: an administrator runs the site, but only a
    # supervisor may overturn what an officer decided.
    "admin": frozenset(Permission) - {Permission.DECIDE, Permission.REVERSE_DECISION},
}
ROLES = tuple(ROLE_PERMISSIONS)

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MIN_PASSWORD = 8
_HASHER = argon2.PasswordHasher()
# Verifying against this when the user does not exist makes a failed login
# take the same time either way, so timing does not reveal who has an account.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user cannot be added or authenticated; ``str(err)`` is one line."""


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    role: str

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


def add_user(store: Store, conn: Connection, username: str, password: str, role: str) -> User:
    """Create (or reset the password and role of) a user.

    Raises
    ------
    AuthError
        Bad user name, unknown role or a password shorter than 8 characters.
    """
    if not _USERNAME.fullmatch(username):
        raise AuthError(f"user name {username[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLE_PERMISSIONS:
        raise AuthError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if len(password) < _MIN_PASSWORD:
        raise AuthError(f"the password must have at least {_MIN_PASSWORD} characters")
    hashed = _HASHER.hash(password)
    exists = conn.execute(sa.select(users.c.username).where(users.c.username == username)).first()
    if exists:
        conn.execute(users.update().where(users.c.username == username).values(password_hash=hashed, role=role))
        conn.execute(tokens.delete().where(tokens.c.username == username))  # a new password ends old sessions
    else:
        conn.execute(users.insert().values(username=username, password_hash=hashed, role=role,
                                           created_at=utc_now()))
    return User(username, role)


def authenticate(conn: Connection, username: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (in the same time either way)."""
    row = conn.execute(sa.select(users).where(users.c.username == username)).first()
    try:
        _HASHER.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return None
    return User(row.username, row.role) if row else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(conn: Connection, user: User, *, lifetime: timedelta) -> str:
    """A new random token for ``user``, valid for ``lifetime``."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    conn.execute(tokens.insert().values(
        token_sha256=_digest(token), username=user.username, created_at=utc_now(),
        expires_at=(now + lifetime).strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
    return token


def user_for_token(conn: Connection, token: str) -> User | None:
    """Whose unexpired token this is (None if nobody's)."""
    row = conn.execute(
        sa.select(users.c.username, users.c.role).join(tokens, tokens.c.username == users.c.username)
        .where(tokens.c.token_sha256 == _digest(token), tokens.c.expires_at > utc_now())).first()
    return User(row.username, row.role) if row else None


def revoke_token(conn: Connection, token: str) -> None:
    """End the session of ``token`` (logging out)."""
    conn.execute(tokens.delete().where(tokens.c.token_sha256 == _digest(token)))
