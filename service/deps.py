"""FastAPI dependencies, as Annotated aliases, all in one place."""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, File, Form, Header, Path, Request, UploadFile
from pydantic import BaseModel
from redis import Redis

from jobs.queue import JobQueue
from jobs.store import JobStore
from pureebm.registry import Registry
from service.auth import authenticate
from service.problems import Problem
from service.schemas import JobSubmission, PurifyParams
from service.settings import Settings
from service.submissions import Submitter


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


def get_registry(settings: Annotated[Settings, Depends(get_settings)]) -> Registry:
    return Registry(settings.registry)


def get_owner(
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[
        str | None, Header(description="API key (or Authorization: Bearer)")
    ] = None,
) -> str:
    """The caller's identity (service.auth)."""
    return authenticate(settings, x_api_key, authorization)


def get_metrics_access(
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """/metrics answers without a key unless ``public_metrics`` is off."""
    if not settings.public_metrics:
        authenticate(settings, x_api_key, authorization)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
OwnerDep = Annotated[str, Depends(get_owner)]
MetricsAccessDep = Annotated[None, Depends(get_metrics_access)]


def get_submitter(
    queue: QueueDep, settings: SettingsDep, registry: RegistryDep, owner: OwnerDep
) -> Submitter:
    return Submitter(queue.store, queue, settings, registry, owner)


SubmitterDep = Annotated[Submitter, Depends(get_submitter)]

# the upload forms: POST /v1/purify's parameters; POST /v1/jobs's, and its webhook
ParamsForm = Annotated[PurifyParams, Form()]
JobForm = Annotated[JobSubmission, Form()]
FilesField = Annotated[list[UploadFile] | None, File(description="one or more images")]


async def single_archive(
    request: Request,
    archive: Annotated[
        UploadFile | None, File(description="an image, zip, tar, tar.gz or npz")
    ] = None,
) -> UploadFile | None:
    """The one `archive` part; a second one is refused, not silently dropped."""
    if archive is not None and len((await request.form()).getlist("archive")) > 1:
        raise Problem(400, "send one archive per job (or images as several 'files')")
    return archive


ArchiveField = Annotated[UploadFile | None, Depends(single_archive)]

REPEATABLE = {"files", "archive"}  # a second archive is refused by single_archive


def strict_form(model: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
    """A dependency that refuses a field the form of ``model`` (and the file parts)
    does not take, or one given twice, naming it (with the nearest field's name),
    rather than run with the defaults in its place."""
    fields = sorted({*model.model_fields, "files", "archive"})

    async def check(request: Request) -> None:
        form = await request.form()
        for name in dict.fromkeys(form.keys()):
            if name not in fields:
                nearest = difflib.get_close_matches(name.lower(), fields, n=1, cutoff=0.6)
                hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
                raise Problem(
                    422,
                    f"unknown field {name!r}{hint} (fields: {', '.join(fields)})",
                    errors=[{"loc": ["body", name], "msg": f"unknown field{hint}"}],
                )
            if name not in REPEATABLE and len(form.getlist(name)) > 1:
                raise Problem(
                    422,
                    f"field {name!r} is given {len(form.getlist(name))} times: give it once",
                    errors=[{"loc": ["body", name], "msg": "given more than once"}],
                )

    return check


StrictForm = Annotated[None, Depends(strict_form(PurifyParams))]
StrictJobForm = Annotated[None, Depends(strict_form(JobSubmission))]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        max_length=200,
        description="makes retries safe: the same key and request get the same job back",
    ),
]
JobIdPath = Annotated[str, Path(description="the job's id, as POST /v1/jobs answered it")]
ModelNamePath = Annotated[str, Path(description="a registry model's NAME")]
