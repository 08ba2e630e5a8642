"""Errors as application/problem+json (RFC 9457), with a status code that names the fault."""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from jobs.record import JobStatus
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
    410: "Gone",
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
PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    """One reason a request failed validation."""

    loc: list[str | int] = Field(description="where: body, query or header, then the field")
    msg: str = Field(description="what is wrong with it")
    type: str | None = Field(None, description="pydantic's error type, where pydantic found it")


class ProblemDetails(BaseModel):
    """Every error's body, as RFC 9457 has it (application/problem+json); a few
    statuses add a member of their own."""

    type: str = Field("about:blank", description="about:blank: the status says what kind")
    title: str = Field(description="the status's name")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request, in words")
    instance: str = Field(description="the request's path")
    errors: list[FieldError] | None = Field(None, description="422: each field that failed")
    job_status: JobStatus | None = Field(None, description="409: the unfinished job's status")
    deleted_at: datetime | None = Field(None, description="410: when the job was deleted")
    job: str | None = Field(None, description="500: the job the request was about, or -")


EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"detail": "no model 'cifar10-conv:9' (models: cifar10-conv, cifar10-ddpm)"},
    401: {"detail": "an API key is required (X-API-Key or Authorization: Bearer)"},
    403: {"detail": "this API key is not accepted"},
    404: {"detail": "no job 3f2c9a7e1b4d4c0e9a5b6c7d8e9f0a1b"},
    408: {"detail": "the body sent nothing for 30 s"},
    409: {
        "detail": "job 3f2c9a7e1b4d4c0e9a5b6c7d8e9f0a1b is running",
        "job_status": "running",
    },
    410: {
        "detail": "job 3f2c9a7e1b4d4c0e9a5b6c7d8e9f0a1b was deleted by its owner at "
        "2025-06-01T12:00:00+00:00",
        "deleted_at": "2025-06-01T12:00:00+00:00",
    },
    413: {"detail": "the upload is over the 8589934592-byte limit"},
    415: {"detail": "not an image or a supported archive (zip, tar, tar.gz, npz)"},
    422: {
        "detail": "request parameters failed validation",
        "errors": [
            {
                "loc": ["body", "steps"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "type": "int_parsing",
            }
        ],
    },
    429: {"detail": "at most 20 active jobs per key"},
    500: {
        "detail": "an unexpected error occurred; it has been logged",
        "job": "3f2c9a7e1b4d4c0e9a5b6c7d8e9f0a1b",
    },
    503: {"detail": "the job queue is unreachable or not answering"},
    504: {"detail": "purification took over 120 s"},
    507: {"detail": "the data volume is full: retry later"},
}


def problem_responses(
    *statuses: int, details: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for the errors it answers, ``statuses`` and the 500 any
    route may answer: each a ProblemDetails with an example (``details`` replaces an
    example's detail). service.openapi adds the schema to the document and sets each
    example's ``instance`` to its route's path."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        example = {"type": "about:blank", "title": TITLES[status], "status": status}
        example.update(EXAMPLES[status])
        if details and status in details:
            example["detail"] = details[status]
        schema = {"$ref": "#/components/schemas/ProblemDetails"}
        responses[status] = {
            "description": TITLES[status],
            "content": {PROBLEM_JSON: {"schema": schema, "example": example}},
        }
    return responses


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
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)


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


def disk_full(exc: BaseException) -> bool:
    """Whether an error was caused, at any depth, by ENOSPC (FastAPI reports a body it
    could not spool as a 400 "error parsing the body", the OSError its cause)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if disk_full(exc):  # the body's spool filled the volume: not the caller's fault
            return problem(request.url.path, 507, "the data volume is full: retry later")
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
