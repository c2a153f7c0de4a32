"""The web application: the REST API under ``/api``, ``/metrics``, and the operator viewer at ``/``.

Routes are thin: they check input and permissions, call the service or the
domain code, and shape the answer. OpenAPI is at ``/docs`` and
``/openapi.json``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import nii
from nii.serve.routes import cases, report, scans, session, system
from nii.serve.service import Service

__all__ = ["VIEWER", "create_app"]

VIEWER = Path(__file__).with_name("viewer")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, counting as they stream.

    A declared Content-Length over the limit is refused before reading; a
    chunked body is cut off once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _too_large(send, self.max_bytes)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"the request is larger than the {limit} byte limit"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_reason(errors: list[dict]) -> str:
    """One line for a request that failed validation: where, what, and how many more.

    FastAPI's own answer is a list that echoes the input back (a whole
    5,000-character note); the sender needs the place and the rule.
    """
    first = errors[0]
    place = list(first.get("loc", ()))
    if place and place[0] in ("body", "query", "path", "header", "cookie"):
        place = place[1:]
    where = ".".join(map(str, place)) or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {' '.join(str(first.get('msg', 'invalid')).split())}{more}"


async def _one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _validation_reason(list(exc.errors()) or [{}])}, status_code=422)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service`` (which the caller starts and stops)."""
    app = FastAPI(title="nii operator service", version=nii.__version__,
                  description="Scans in from scanner hardware, annotated results out to the inspecting officer.")
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _one_line_validation_error)
    app.include_router(session.router)
    app.include_router(scans.router)
    app.include_router(cases.router)
    app.include_router(report.router)
    app.include_router(system.router)
    app.mount("/static", StaticFiles(directory=VIEWER), name="static")

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(VIEWER / "index.html")

    # Multipart form parts add a little over the scan bytes themselves.
    app.add_middleware(BodyLimit, max_bytes=service.config.max_upload_bytes + (1 << 20))
    return app
