"""Logging in: bearer tokens for API clients, a session cookie for the viewer."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from nii.serve import audit
from nii.serve.auth import Permission, User, authenticate, issue_token, revoke_token
from nii.serve.deps import SESSION_COOKIE, CurrentUser, ServiceDep, bearer_or_cookie
from nii.serve.service import Service

router = APIRouter(prefix="/api", tags=["session"])
LoginForm = Annotated[OAuth2PasswordRequestForm, Depends()]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"


class UserPublic(BaseModel):
    username: str
    role: str
    # What the role may do (nii.serve.auth): the viewer offers only these,
    # and the API checks them again.
    permissions: list[str]

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(username=user.username, role=user.role,
                   permissions=sorted(p.value for p in Permission if user.can(p)))


def _login(service: Service, form: OAuth2PasswordRequestForm, how: str) -> tuple[User, str]:
    with service.store.transaction() as conn:
        user = authenticate(conn, form.username, form.password)
        audit.append(service.store, conn, username=form.username[:64], action="login" if user else "login_failed",
                     detail={"via": how})
        issued = issue_token(conn, user, lifetime=timedelta(hours=service.config.session_hours)) if user else None
    if user is None:  # raised outside the transaction, so the failed attempt stays in the audit log
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password",
                            headers={"WWW-Authenticate": "Bearer"})
    return user, issued


@router.post("/token", response_model=Token)
def token(form: LoginForm, service: ServiceDep) -> Token:
    """OAuth2 password flow: user name and password in, bearer token out."""
    _, issued = _login(service, form, "token")
    return Token(access_token=issued)


@router.post("/session", response_model=UserPublic)
def open_session(form: LoginForm, service: ServiceDep, response: Response) -> UserPublic:
    """The viewer's login: sets an HttpOnly session cookie."""
    user, issued = _login(service, form, "viewer")
    response.set_cookie(SESSION_COOKIE, issued, httponly=True, samesite="strict",
                        max_age=int(service.config.session_hours * 3600))
    return UserPublic.of(user)


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def close_session(request: Request, service: ServiceDep, response: Response) -> None:
    """Log out: the token stops working at once."""
    issued = bearer_or_cookie(request)
    if issued:
        with service.store.transaction() as conn:
            revoke_token(conn, issued)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    return UserPublic.of(user)
