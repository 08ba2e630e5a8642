"""/v1/jobs: submit, follow, download, cancel and list purification jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from redis.exceptions import RedisError

from jobs.queue import JobQueue
from jobs.record import ACTIVE, JobRecord, JobStatus, Progress, Report
from jobs.resource import JobResource, job_resource
from jobs.store import JobStore
from service.deps import (
    ArchiveField,
    FilesField,
    IdempotencyKeyHeader,
    JobForm,
    JobIdPath,
    OwnerDep,
    QueueDep,
    StoreDep,
    StrictJobForm,
    SubmitterDep,
)
from service.media import MEDIA_TYPES, binary_content, media_type_of
from service.problems import Problem, problem_responses
from service.schemas import JobPage

# every job route authenticates the caller and reads the queue
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 403, 503))


def to_resource(queue: JobQueue, record: JobRecord) -> JobResource:
    return job_resource(record, queue.progress(record))


@router.post(
    "",
    status_code=202,
    response_model=JobResource,
    responses=problem_responses(400, 408, 409, 413, 415, 422, 429, 507),
)
async def submit(
    response: Response,
    submitter: SubmitterDep,
    params: JobForm,
    _: StrictJobForm,
    archive: ArchiveField,
    files: FilesField = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobResource:
    """Upload images (`files`) or one archive (`archive`) to purify; poll the returned job.

    With an `Idempotency-Key` header, repeating a request returns the job the
    first one created instead of creating another (`Idempotent-Replayed: true`); the
    same key with a different request is 422, and a key whose job was deleted or
    expired starts afresh.
    """
    record, replayed = await submitter.create_once(params, files, archive, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    try:
        return await submitter.redis(to_resource, submitter.queue, record)
    except RedisError:  # the job exists: a 503 now would make a client send it twice
        return job_resource(
            record, Progress(done=0, total=record.work, images_per_s=None, eta_s=None)
        )


def owned(store: JobStore, job_id: str, owner: str) -> JobRecord:
    """The caller's job; 410 saying when and why for one deleted since (by its owner
    or at the end of retention), 404 for an id that never was the caller's."""
    record = store.get_owned(job_id, owner)
    if record is None:
        gone = store.gone(job_id, owner)
        if gone is not None:
            reason, at = gone
            when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
            raise Problem(410, f"job {job_id} was {reason} at {when}", deleted_at=when)
        raise Problem(404, f"no job {job_id}")
    return record


@router.get("", response_model=JobPage, responses=problem_responses(422))
def list_jobs(
    queue: QueueDep,
    owner: OwnerDep,
    offset: Annotated[int, Query(ge=0, le=10**9, description="jobs to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="jobs on this page, at most")] = 50,
) -> JobPage:
    """The caller's jobs, newest first."""
    store = queue.store
    ids, total = store.owned_ids(owner, offset, limit)
    records = [r for r in (store.get(i) for i in ids) if r is not None]
    items = [to_resource(queue, r) for r in records]
    following = offset + limit if offset + limit < total else None
    return JobPage(items=items, total=total, offset=offset, limit=limit, next_offset=following)


@router.get("/{job_id}", response_model=JobResource, responses=problem_responses(404, 410))
def get_job(job_id: JobIdPath, queue: QueueDep, owner: OwnerDep) -> JobResource:
    return to_resource(queue, owned(queue.store, job_id, owner))


def require_finished(record: JobRecord) -> None:
    if record.status != JobStatus.finished:
        detail = f"job {record.id} is {record.status.value}"
        if record.error:
            detail += f": {record.error}"
        raise Problem(409, detail, job_status=record.status.value)


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": binary_content(*MEDIA_TYPES.values())}}
    | problem_responses(404, 409, 410),
)
def get_result(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> FileResponse:
    """The purified data, in the container it came in."""
    record = owned(store, job_id, owner)
    require_finished(record)
    path = store.folders.result_path(record)
    media_type = media_type_of(path)
    return FileResponse(path, media_type=media_type, filename=record.result_name)


@router.get(
    "/{job_id}/report",
    response_class=FileResponse,
    responses={200: {"model": Report}} | problem_responses(404, 409, 410),
)
def get_report(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> FileResponse:
    """Each image's energy before and after purification (a Report), streamed from
    the file the finaliser wrote, however many images the job had."""
    record = owned(store, job_id, owner)
    require_finished(record)
    return FileResponse(store.folders.report_path(job_id), media_type="application/json")


@router.get(
    "/{job_id}/preview.png",
    response_class=FileResponse,
    responses={200: {"content": binary_content("image/png")}} | problem_responses(404, 409, 410),
)
def get_preview(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> FileResponse:
    """The job's card, to look at: a few images as sent, purified, and their difference
    amplified, above a histogram of the scores with the filter's cut."""
    record = owned(store, job_id, owner)
    require_finished(record)
    path = store.folders.preview_path(job_id)
    if not path.exists():
        raise Problem(404, f"job {job_id} has no preview (its card could not be drawn)")
    return FileResponse(path, media_type="image/png")


@router.delete("/{job_id}", response_model=JobResource, responses=problem_responses(404, 410))
def delete_job(job_id: JobIdPath, queue: QueueDep, owner: OwnerDep) -> JobResource:
    """Cancel the job if it is queued or running, and delete its data."""
    store = queue.store
    record = owned(store, job_id, owner)
    if record.status in ACTIVE:
        queue.cancel(record)
        record = store.get(job_id) or record
    resource = to_resource(queue, record)
    store.delete(record, reason="deleted by its owner")
    return resource
