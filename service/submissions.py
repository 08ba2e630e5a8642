"""Job creation: quota, model pinning, validation of the upload, saving, queueing,
and Idempotency-Key replay. Routers call it; it knows no HTTP beyond raising
Problem. Everything that waits (the upload's checks, every Redis call, which a hung
Redis holds for REDIS_TIMEOUT_S) runs in the thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.queue import JobQueue
from jobs.record import JobParams, JobRecord, JobStatus, Webhook
from jobs.store import JobStore
from jobs.webhooks import WEBHOOKS_OFF, WebhookError, parse_events
from pureebm.filtering import FilterError, most_pixels_selected
from pureebm.purifiers import Overrides
from pureebm.registry import Registry
from pureebm.requests import Resolved, calibration_warnings, resolve_request, size_warnings
from pureebm.shards import cut_shards
from service.disk import job_needs
from service.problems import Problem
from service.schemas import JobSubmission, PurifyParams
from service.settings import Settings
from service.uploads import CHUNK, prepare_input

log = logging.getLogger("pureebm.api")
T = TypeVar("T")


@dataclass
class Submitter:
    """What creating a job needs, built per request (deps.SubmitterDep)."""

    store: JobStore
    queue: JobQueue
    settings: Settings
    registry: Registry
    owner: str

    async def redis(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` (one that talks to Redis) in the thread pool, given up on
        after REDIS_TIMEOUT_S: a frozen Redis can leave redis-py reading a fresh
        connection's handshake with no timeout, so the wait is bounded here too."""
        deadline = self.settings.redis_timeout_s + 0.5
        try:
            return await asyncio.wait_for(run_in_threadpool(call, *args), deadline)
        except TimeoutError as e:
            raise RedisTimeoutError(f"no answer from Redis within {deadline} s") from e

    def over_quota(self) -> Problem:
        limit = self.settings.max_active_jobs_per_key
        return Problem(429, f"at most {limit} active jobs per key", headers={"Retry-After": "30"})

    async def create(
        self,
        params: PurifyParams,
        files: list[UploadFile] | None,
        archive: UploadFile | None,
        sync: bool = False,
        webhook: Webhook | None = None,
        claim: Callable[[str], bool] | None = None,
    ) -> JobRecord:
        """Store and validate the upload, then queue its shards. Nothing is left behind
        on error. ``claim(job_id)``, if given, runs once the job is saved and before it
        is queued: False drops the job (LostClaim), so it never runs nor announces."""
        store, settings, owner = self.store, self.settings, self.owner
        if await self.redis(store.active_count, owner) >= settings.max_active_jobs_per_key:
            raise self.over_quota()
        # An unknown model is a RegistryError: 400. Every model is pinned now, so that
        # every shard runs the same versions and the job shows what it ran with.
        overrides = params.model_dump(include=set(PurifyParams.model_fields) - {"model", "seed"})
        try:
            resolved = await self.redis(
                resolve_request,
                Overrides(**overrides),
                params.model,
                self.registry,
                settings.default_model,
            )
        except FilterError as e:
            raise Problem(400, str(e)) from e
        except ValueError as e:
            raise Problem(422, str(e)) from e
        job_params = JobParams(
            **resolved.model_dump(),
            seed=secrets.randbelow(2**31) if params.seed is None else params.seed,
        )
        # sides are padded to the model's size, and limits count the padded pixels
        min_side = self.registry.manifest(resolved.model).image_size if resolved.model else 1
        job_id = uuid.uuid4().hex
        folder = store.folders.folder(job_id)
        try:
            store.folders.create(job_id)
            started = time.perf_counter()
            held = await self.redis(store.reserved_disk)
            prepared = await run_in_threadpool(
                prepare_input,
                folder / "input",
                store.folders.decoded_path(job_id),
                settings,
                settings.limits.model_copy(update={"min_side": min_side}),
                files,
                archive,
                held,
            )
            validate_s = time.perf_counter() - started
            check_compute(resolved, prepared.pixels, settings.max_job_pixel_passes)
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
                shard_bounds=cut_shards(
                    prepared.pixels, settings.shard_size, settings.shard_pixels
                ),
                params=job_params,
                warnings=[
                    *calibration_warnings(resolved, self.registry),
                    *size_warnings(prepared.pixels, resolved.model, min_side),
                ],
                sync=sync,
                webhook=webhook,
                created_at=now,
                expires_at=now + settings.retention_s,
            )
            # the check above is cheap; this one, with the save, is atomic (concurrent uploads)
            quota = settings.max_active_jobs_per_key
            if not await self.redis(store.save_within_quota, record, quota):
                raise self.over_quota()
            if claim is not None and not await self.redis(claim, job_id):
                raise LostClaim
            needs = job_needs(prepared.input_bytes, prepared.pixels)
            await self.redis(store.reserve_disk, job_id, needs)
            await self.redis(self.queue.enqueue, record)
            log.info(
                "job queued",
                extra={
                    "job_id": job_id,
                    "images": record.images,
                    "shards": record.shards,
                    "validate_s": round(validate_s, 4),
                },
            )
            return record
        except BaseException:
            await self.redis(self.discard, job_id)
            raise

    def discard(self, job_id: str) -> None:
        """A job that failed while being created: its folder and any record."""
        shutil.rmtree(self.store.folders.folder(job_id), ignore_errors=True)
        with contextlib.suppress(RedisError):  # a hung Redis: the cleaner sees the record
            existing = self.store.get(job_id)
            if existing is not None:
                self.store.delete(existing)

    async def webhook(self, params: JobSubmission) -> Webhook | None:
        """The job's webhook: its events known and its target allowed (resolved in the
        thread pool); a 422 naming the field otherwise."""
        try:
            if params.webhook is None:
                if params.webhook_events is not None:
                    raise WebhookError("webhook_events", "given without a webhook")
                return None
            if self.settings.webhook_secret is None:
                raise WebhookError("webhook", WEBHOOKS_OFF)
            events = parse_events(params.webhook_events)
            await run_in_threadpool(self.settings.webhook_targets.check, params.webhook)
        except WebhookError as e:
            raise Problem(
                422, f"{e.field}: {e}", errors=[{"loc": ["body", e.field], "msg": str(e)}]
            ) from e
        return Webhook(url=params.webhook, events=events)

    async def create_once(
        self,
        params: JobSubmission,
        files: list[UploadFile] | None,
        archive: UploadFile | None,
        idempotency_key: str | None,
    ) -> tuple[JobRecord, bool]:
        """Create a job or, with an Idempotency-Key that created one before from the same
        request, return that job (IETF Idempotency-Key draft). The same key with another
        request is 422; a key whose job is gone starts afresh. Returns (job, replayed).
        The webhook is checked before a job is created (``webhook``)."""
        if not idempotency_key:
            webhook = await self.webhook(params)
            return await self.create(params, files, archive, webhook=webhook), False
        store, owner = self.store, self.owner
        fingerprint = await run_in_threadpool(request_fingerprint, params, files, archive)
        existing = await self.redis(store.idempotent_job, owner, idempotency_key)
        if existing is not None:
            return replay(*existing, fingerprint), True
        webhook = await self.webhook(params)

        def claim(job_id: str) -> bool:
            return store.claim_idempotency_key(owner, idempotency_key, job_id, fingerprint)

        try:
            return await self.create(params, files, archive, webhook=webhook, claim=claim), False
        except LostClaim:  # a concurrent request with the key won: answer with its job
            winner = await self.redis(store.idempotent_job, owner, idempotency_key)
        if winner is None:
            raise Problem(409, "a concurrent request with this Idempotency-Key failed: retry")
        return replay(*winner, fingerprint), True


class LostClaim(Exception):
    """Another request claimed the job's Idempotency-Key first."""


def check_compute(resolved: Resolved, pixels: list[int], limit: int) -> None:
    """Refuse a job whose compute is over ``limit``, saying by how much: the most
    pixels it can purify (a filter's fraction counted on the largest images it could
    choose, pureebm.filtering.most_pixels_selected) x the purifier's network passes,
    plus one scoring pass over every image for a filter."""
    purified = most_pixels_selected(pixels, resolved.filter)
    passes = resolved.purifier.passes()
    compute = purified * passes + (sum(pixels) if resolved.filter is not None else 0)
    if compute > limit:
        raise Problem(
            413,
            f"the job's compute, {compute:.3g} pixel-passes (at most {purified} pixels "
            f"purified x {passes} network passes"
            + (", and the filter's scoring pass" if resolved.filter is not None else "")
            + f"), is {compute / limit:.1f}x the {limit:.3g} limit "
            "(PUREEBM_MAX_JOB_PIXEL_PASSES): send fewer or smaller images, or fewer steps",
        )


def replay(record: JobRecord, fingerprint: str, request: str) -> JobRecord:
    if fingerprint != request:
        raise Problem(
            422,
            "this Idempotency-Key was used with a different request (other files or "
            "parameters): use a new key for a new request",
        )
    return record


def request_fingerprint(
    params: PurifyParams, files: list[UploadFile] | None, archive: UploadFile | None
) -> str:
    """sha256 of what a request asks for: its parameters as sent, the form field its
    upload came in (``files`` or ``archive``: each is answered differently), and each
    part's name and the sha256 of its bytes (fixed-length digests: no two requests
    run together)."""
    digest = hashlib.sha256(params.model_dump_json().encode())
    digest.update(b"files" if files else b"archive")
    for upload in files or [archive]:
        if upload is None:
            continue
        part = hashlib.sha256()
        upload.file.seek(0)
        while chunk := upload.file.read(CHUNK):
            part.update(chunk)
        upload.file.seek(0)
        name = hashlib.sha256((upload.filename or "").encode()).digest()
        digest.update(name + part.digest())
    return digest.hexdigest()
