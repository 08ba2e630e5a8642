"""/v1/jobs: submit, follow, download, cancel and list purification jobs."""

from __future__ import annotations

import json
import secrets
import shutil
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from pureebm.shards import cut_shards
from service.deps import OwnerDep, RegistryDep, SettingsDep, StoreDep
from service.jobs import PREFIX, JobStore
from service.problems import Problem
from service.schemas import (
    ACTIVE,
    JobPage,
    JobRecord,
    JobResource,
    JobStatus,
    PurifyParams,
    Report,
    Timings,
)
from service.settings import Settings
from service.uploads import prepare_input

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {
    ".png": "image/png",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".npz": "application/octet-stream",
}

FilesField = Annotated[list[UploadFile] | None, File(description="one or more images")]
ArchiveField = Annotated[UploadFile | None, File(description="zip, tar, tar.gz or npz")]
ParamsForm = Annotated[PurifyParams, Form()]


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def to_resource(store: JobStore, record: JobRecord) -> JobResource:
    base = f"/v1/jobs/{record.id}"
    links = {"self": base}
    if record.status == JobStatus.finished:
        links |= {"result": f"{base}/result", "report": f"{base}/report"}
    end = record.finished_at or time.time()
    return JobResource(
        id=record.id,
        status=record.status,
        kind=record.kind,
        input_name=record.input_name,
        input_bytes=record.input_bytes,
        params=record.params,
        progress=store.progress(record),
        error=record.error if record.status == JobStatus.failed else None,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        timings=Timings(
            queued_s=(record.started_at or end) - record.created_at,
            running_s=end - record.started_at if record.started_at else None,
        ),
        links=links,
    )


async def create_job(
    store: JobStore,
    settings: Settings,
    registry: RegistryDep,
    owner: str,
    params: PurifyParams,
    files: list[UploadFile] | None,
    archive: UploadFile | None,
    sync: bool = False,
) -> JobRecord:
    """Store and validate the upload, then queue its shards. Nothing is left behind on error."""
    if store.active_count(owner) >= settings.max_active_jobs_per_key:
        raise Problem(
            429,
            f"at most {settings.max_active_jobs_per_key} active jobs per key",
            headers={"Retry-After": "30"},
        )
    manifest = registry.manifest(params.model or settings.default_model)  # unknown model: 400
    # Pinned now, so that every shard runs the same model version and the job shows
    # what it ran with, even if a newer version is registered meanwhile.
    langevin = params.langevin(manifest.langevin.params())
    params = params.model_copy(
        update={
            "model": f"{manifest.name}:{manifest.version}",
            "steps": langevin.steps,
            "eps": langevin.eps,
            "tau": langevin.tau,
            "seed": secrets.randbelow(2**31) if params.seed is None else params.seed,
        }
    )
    job_id = uuid.uuid4().hex
    folder = store.folder(job_id)
    try:
        for sub in ("input", "shards", "result"):
            (folder / sub).mkdir(parents=True)
        prepared = await run_in_threadpool(
            prepare_input, folder / "input", settings, files, archive
        )
        now = time.time()
        record = JobRecord(
            id=job_id,
            owner=owner,
            status=JobStatus.queued,
            kind=prepared.kind,
            input_file=prepared.input_file,
            input_name=prepared.input_name,
            input_bytes=prepared.input_bytes,
            result_name=prepared.result_name,
            images=len(prepared.pixels),
            shard_bounds=cut_shards(prepared.pixels, settings.shard_size, settings.shard_pixels),
            params=params,
            sync=sync,
            created_at=now,
            expires_at=now + settings.retention_s,
        )
        store.save(record)
        store.enqueue(record)
        return record
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        existing = store.get(job_id)
        if existing is not None:
            store.delete(existing)
        raise


@router.post(
    "",
    status_code=202,
    response_model=JobResource,
    responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
)
async def submit(
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    registry: RegistryDep,
    owner: OwnerDep,
    params: ParamsForm,
    files: FilesField = None,
    archive: ArchiveField = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobResource:
    """Upload images (`files`) or one archive (`archive`) to purify; poll the returned job.

    With an `Idempotency-Key` header, repeating a request returns the job the
    first one created instead of creating another.
    """
    idem = f"{PREFIX}:idem:{owner}:{idempotency_key}" if idempotency_key else None
    if idem and (existing := store.redis.get(idem)):
        record = store.get_owned(existing.decode(), owner)
        if record is not None:
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Location"] = f"/v1/jobs/{record.id}"
            return to_resource(store, record)
    record = await create_job(store, settings, registry, owner, params, files, archive)
    if idem and not store.redis.set(idem, record.id, nx=True, ex=settings.retention_s):
        store.cancel(record)  # a concurrent request with the same key won the race
        store.delete(record)
        winner = store.get_owned(store.redis.get(idem).decode(), owner)
        if winner is None:
            raise Problem(409, "a concurrent request with this Idempotency-Key failed")
        record = winner
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return to_resource(store, record)


def owned(store: JobStore, job_id: str, owner: str) -> JobRecord:
    record = store.get_owned(job_id, owner)
    if record is None:
        raise Problem(404, f"no job {job_id}")
    return record


@router.get("", response_model=JobPage)
def list_jobs(
    store: StoreDep,
    owner: OwnerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """The caller's jobs, newest first."""
    ids, total = store.owned_ids(owner, offset, limit)
    records = [r for r in (store.get(i) for i in ids) if r is not None]
    items = [to_resource(store, r) for r in records]
    following = offset + limit if offset + limit < total else None
    return JobPage(items=items, total=total, offset=offset, limit=limit, next_offset=following)


@router.get("/{job_id}", response_model=JobResource, responses={404: {}})
def get_job(job_id: str, store: StoreDep, owner: OwnerDep) -> JobResource:
    return to_resource(store, owned(store, job_id, owner))


def require_finished(record: JobRecord) -> None:
    if record.status != JobStatus.finished:
        detail = f"job {record.id} is {record.status.value}"
        if record.error:
            detail += f": {record.error}"
        raise Problem(409, detail, job_status=record.status.value)


@router.get("/{job_id}/result", response_class=FileResponse, responses={404: {}, 409: {}})
def get_result(job_id: str, store: StoreDep, owner: OwnerDep) -> FileResponse:
    """The purified data, in the container it came in."""
    record = owned(store, job_id, owner)
    require_finished(record)
    path = store.result_path(record)
    media_type = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media_type, filename=record.result_name)


@router.get("/{job_id}/report", response_model=Report, responses={404: {}, 409: {}})
def get_report(job_id: str, store: StoreDep, owner: OwnerDep) -> Report:
    """Each image's energy before and after purification."""
    record = owned(store, job_id, owner)
    require_finished(record)
    return Report.model_validate(json.loads(store.report_path(job_id).read_text()))


@router.delete("/{job_id}", response_model=JobResource, responses={404: {}})
def delete_job(job_id: str, store: StoreDep, owner: OwnerDep) -> JobResource:
    """Cancel the job if it is queued or running, and delete its data."""
    record = owned(store, job_id, owner)
    if record.status in ACTIVE:
        store.cancel(record)
        record = store.get(job_id) or record
    resource = to_resource(store, record)
    store.delete(record)
    return resource
