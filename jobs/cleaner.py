"""The cleaner, run by the API every cleanup_interval_s: it fails the jobs nothing
will move on any more, deletes jobs (and orphaned folders) past retention, and
prunes the indexes that records leave behind when Redis expires them."""

from __future__ import annotations

import shutil
import time

from jobs.keys import (
    JOB_ID,
    KEY_GRACE_S,
    STATES_KEY,
    WORKER_RATE_KEY,
    finalize_job_id,
    job_key,
    owner_key,
    select_job_id,
)
from jobs.queue import JobQueue
from jobs.record import ACTIVE
from jobs.store import JobStore


def fail_stalled(queue: JobQueue, now: float | None = None) -> int:
    """Fail active jobs that nothing will move on: their finalising RQ job (the one
    that ends every job) is gone or has ended without ending the job, for instance
    a worker killed during its last attempt, or Redis restarted without the queue.
    A filtered job is also moving while its selecting job (which queues the
    finalising one before it ends) is pending."""
    now = time.time() if now is None else now
    settle_s = 2 * queue.settings.worker_lease_s  # between saving a job and queueing it
    failed = 0
    states = queue.redis.hgetall(STATES_KEY)
    active = [job_id.decode() for job_id, state in states.items() if state.decode() in ACTIVE]
    for job_id in active:
        record = queue.store.get(job_id)
        if record is None or record.status not in ACTIVE:
            continue
        # an active job's keys live on until retention_s after it ends (mark_ended)
        keep_until = int(now + queue.settings.retention_s) + KEY_GRACE_S
        queue.redis.expireat(job_key(job_id), keep_until, gt=True)
        if record.created_at > now - settle_s:
            continue
        # the selecting job first: it queues the finaliser before it ends, so a
        # finaliser looked at first could be missing only because it is not queued yet
        enders = [finalize_job_id(record.id)]
        if record.params.filter is not None:
            enders.insert(0, select_job_id(record.id))
        ended = all(queue.rq_job_ended(rq_id) for rq_id in enders)
        error = record.error or "the job stalled: its work ended or was lost"
        if ended and queue.store.fail(record, error):
            failed += 1
    return failed


def delete_expired(store: JobStore, now: float | None = None) -> int:
    """The retention cleaner: delete ended jobs past ``expires_at`` (retention counts
    from a job's end: ``mark_ended``; a job still active is left to the stall
    check) and orphaned folders."""
    now = time.time() if now is None else now
    deleted = 0
    for job_id in [k.decode() for k in store.redis.hkeys(STATES_KEY)]:
        record = store.get(job_id)
        if record is None:
            store.redis.hdel(STATES_KEY, job_id)
        elif record.expires_at < now and record.status not in ACTIVE:
            store.delete(record, reason="deleted after its retention period")
            deleted += 1
    if store.settings.jobs_dir.is_dir():
        for folder in store.settings.jobs_dir.iterdir():
            orphan = JOB_ID.match(folder.name) and not store.redis.exists(job_key(folder.name))
            if orphan and folder.stat().st_mtime < now - 3600:
                shutil.rmtree(folder, ignore_errors=True)
    return deleted


WORKER_RATE_KEEP_S = 3600  # a worker's last rate is dropped this long after its last shard


def prune_indexes(store: JobStore, now: float | None = None) -> int:
    """Drop the ids of jobs whose records are gone (expired by Redis, or deleted)
    from the owners' sets, which the quota walks and listings count, and the rates
    of workers gone for an hour (one per restart). Returns how many were dropped."""
    now = time.time() if now is None else now
    redis, dropped = store.redis, 0
    for key in redis.scan_iter(match=owner_key("*"), count=500):
        ids = redis.zrange(key, 0, -1)
        if not ids:
            continue
        with redis.pipeline() as pipe:
            for job_id in ids:
                pipe.exists(job_key(job_id.decode()))
            exists = pipe.execute()
        dead = [job_id for job_id, alive in zip(ids, exists, strict=True) if not alive]
        if dead:
            dropped += redis.zrem(key, *dead)
            redis.hdel(STATES_KEY, *dead)
    stale = [
        worker
        for worker, value in redis.hgetall(WORKER_RATE_KEY).items()
        if float(value.decode().rsplit(":", 1)[1]) < now - WORKER_RATE_KEEP_S
    ]
    if stale:
        dropped += redis.hdel(WORKER_RATE_KEY, *stale)
    return dropped
