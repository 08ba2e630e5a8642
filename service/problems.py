"""Errors as application/problem+json (RFC 9457), with a status code that names the fault."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pureebm.images import FormatError
from pureebm.registry import RegistryError

log = logging.getLogger("pureebm.api")

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    411: "Length required",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Gateway timeout",
    507: "Insufficient storage",
}


class Problem(HTTPException):
    """An HTTP error with a human-readable detail; extra members go into the body."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(status, detail, headers)
        self.extra = extra


def problem(
    path: str,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": path,
        **extra,
    }
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


QUEUE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def queue_unreachable(path: str) -> JSONResponse:
    return problem(path, 503, "the job queue is unreachable or not answering")


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything no handler expects: a problem+json 500, never text or a traceback;
    the log keeps the traceback and the job the request was about. Called by the
    app's outermost middleware, so the connection stays healthy."""
    job = request.path_params.get("job_id", "-")
    log.error(
        "unexpected error on %s %s (job %s)", request.method, request.url.path, job, exc_info=exc
    )
    return problem(
        request.url.path, 500, "an unexpected error occurred; it has been logged", job=job
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(
            request.url.path,
            exc.status_code,
            str(exc.detail),
            exc.headers,
            **getattr(exc, "extra", {}),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return problem(request.url.path, 422, "request parameters failed validation", errors=errors)

    @app.exception_handler(FormatError)
    async def bad_input(request: Request, exc: FormatError) -> JSONResponse:
        return problem(request.url.path, exc.status, str(exc))

    @app.exception_handler(RegistryError)
    async def bad_model(request: Request, exc: RegistryError) -> JSONResponse:
        return problem(request.url.path, 400, str(exc))

    async def no_queue(request: Request, exc: Exception) -> JSONResponse:
        log.error("queue unreachable: %s", exc)
        return queue_unreachable(request.url.path)

    for error in QUEUE_ERRORS:
        app.add_exception_handler(error, no_queue)
