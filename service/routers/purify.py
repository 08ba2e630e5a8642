"""/v1/purify: small batches, answered in the same request."""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter
from fastapi.responses import FileResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from jobs.keys import SYNC_QUEUE
from jobs.record import ACTIVE, JobRecord, JobStatus, Report
from service.deps import ArchiveField, FilesField, ParamsForm, StrictForm, SubmitterDep
from service.media import attachment, binary_content, media_type_of
from service.problems import Problem, problem_responses

router = APIRouter(prefix="/v1", tags=["purify"])
POLL_S = 0.1
WORKER_LOOK_S = 2.0  # how often a waiting request checks that a worker is still alive


@router.post(
    "/purify",
    response_class=FileResponse,
    responses={200: {"content": binary_content("image/png", "image/tiff", "application/zip")}}
    | problem_responses(400, 401, 403, 408, 413, 415, 422, 429, 503, 504, 507),
)
async def purify_now(
    submitter: SubmitterDep,
    params: ParamsForm,
    _: StrictForm,
    archive: ArchiveField,
    files: FilesField = None,
) -> FileResponse:
    """Purify up to `sync_max_images` images and return them: one PNG for one image, else a zip.

    `Purified-Count` says how many images were purified and `Purified-Positions` lists
    their positions (in the order sent, counted from 0); with a filter, the others
    come back as sent.
    The work runs on a worker through a priority queue; the request waits at most
    `sync_timeout_s` (504 after that, and the work is canceled), or 503 as soon as no
    live worker is left.
    """
    store, queue, settings = submitter.store, submitter.queue, submitter.settings
    if archive is not None:
        raise Problem(400, "/v1/purify takes `files`; send archives to /v1/jobs")
    if files and len(files) > settings.sync_max_images:
        raise Problem(
            413,
            f"/v1/purify takes at most {settings.sync_max_images} images; use /v1/jobs for more",
        )
    if not await submitter.redis(queue.live_workers, SYNC_QUEUE):
        raise Problem(503, "no live worker: none has sent a heartbeat within 2 leases")
    record = await submitter.create(params, files, None, sync=True)

    def delete() -> None:
        store.delete(store.get(record.id) or record)

    try:
        current = await wait_for_end(submitter, record)
        report = await asyncio.to_thread(store.folders.report_path(current.id).read_text)
        rows = Report.model_validate_json(report).images
    except BaseException:
        with contextlib.suppress(RedisError):  # a hung Redis: the cleaner removes it later
            await submitter.redis(delete)
        raise
    path = store.folders.result_path(current)
    headers = {
        "Content-Disposition": attachment(path.name),
        # which images were purified (positions in the order sent); a filter passes the
        # others through byte-identical
        "Purified-Count": str(sum(row.purified for row in rows)),
        "Purified-Positions": ", ".join(str(i) for i, row in enumerate(rows) if row.purified),
    }
    if current.warnings:  # RFC 7234's Warning header, code 299: a persistent warning
        headers["Warning"] = " ".join(f'299 pureebm "{w}"' for w in current.warnings)
    return FileResponse(  # streamed from disk; the job is deleted once it is sent
        path, media_type=media_type_of(path), headers=headers, background=BackgroundTask(delete)
    )


async def wait_for_end(submitter: SubmitterDep, record: JobRecord) -> JobRecord:
    """The finished job, polled off the event loop; 504 past ``sync_timeout_s``, 503
    once no live worker is left, 500 if it failed."""
    store, queue, settings = submitter.store, submitter.queue, submitter.settings
    deadline = time.monotonic() + settings.sync_timeout_s
    next_look = time.monotonic() + WORKER_LOOK_S
    while (current := await submitter.redis(store.get, record.id)) is not None:
        if current.status not in ACTIVE:
            break
        if time.monotonic() > deadline:
            await submitter.redis(queue.cancel, current)
            raise Problem(
                504,
                f"purification took over {settings.sync_timeout_s} s and was canceled: send "
                "work this long to POST /v1/jobs, which runs it in the background and is "
                "polled (or announced by webhook)",
            )
        if time.monotonic() > next_look:  # the worker died meanwhile: no wait till 504
            next_look = time.monotonic() + WORKER_LOOK_S
            if not await submitter.redis(queue.live_workers, SYNC_QUEUE):
                await submitter.redis(queue.cancel, current)
                raise Problem(503, "no live worker left to finish the purification")
        await asyncio.sleep(POLL_S)
    if current is None or current.status != JobStatus.finished:
        error = current.error if current else "the job disappeared"
        raise Problem(500, f"purification failed: {error}")
    return current
