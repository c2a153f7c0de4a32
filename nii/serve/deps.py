"""FastAPI dependencies the routes share: the service, the current user, permissions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status

from nii.serve.auth import Permission, User, user_for_token
from nii.serve.service import Service
from nii.serve.store import MAX_ROW_ID

__all__ = ["SESSION_COOKIE", "CurrentUser", "RowId", "RowOffset", "ServiceDep", "allowed", "bearer_or_cookie"]

SESSION_COOKIE = "nii_session"


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

# Ids and offsets from a request: one the database cannot hold is a 422,
# not an overflow deep in the driver.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
RowOffset = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]


def bearer_or_cookie(request: Request) -> str | None:
    """The caller's token: ``Authorization: Bearer`` (API clients) or the viewer's cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.cookies.get(SESSION_COOKIE)


def current_user(request: Request, service: ServiceDep) -> User:
    token = bearer_or_cookie(request)
    user = None
    if token:
        with service.store.read() as conn:
            user = user_for_token(conn, token)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first (POST /api/token or the viewer)",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def allowed(permission: Permission):
    """A dependency giving the current user, or 403 if their role lacks ``permission``."""

    def check(user: CurrentUser) -> User:
        if not user.can(permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {user.role} may not {permission.value.replace('_', ' ')}")
        return user

    return Annotated[User, Depends(check)]
