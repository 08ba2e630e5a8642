"""Every Redis key the service writes, the queue names and the RQ job ids: one
place, so that no module reads another's keys behind its back."""

from __future__ import annotations

import re

PREFIX = "pureebm"
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
KEY_GRACE_S = 3600  # a job's keys outlive its expires_at by this, for the cleaner

STATES_KEY = f"{PREFIX}:states"  # hash: job id -> status
CANCELED_KEY = f"{PREFIX}:canceled"  # counter: jobs canceled (their records are deleted)
IMAGES_KEY = f"{PREFIX}:stats:images"  # counter: images purified by all workers
SHARD_SECONDS_KEY = f"{PREFIX}:stats:shard_seconds"  # hash: a histogram's buckets
WORKER_RATE_KEY = f"{PREFIX}:stats:worker_rate"  # hash: worker -> "images/s:time"
DISK_RESERVED_KEY = f"{PREFIX}:disk:reserved"  # hash: job id -> bytes it may still write
WEBHOOK_DUE_KEY = f"{PREFIX}:webhooks:due"  # sorted set: delivery id -> its next attempt's time
WEBHOOK_PROGRESS_KEY = f"{PREFIX}:webhooks:progress"  # hash: job id -> done at its last event
WEBHOOK_OUTCOMES_KEY = f"{PREFIX}:stats:webhooks"  # hash: delivered, failed (counters)

BATCH_QUEUE = "pureebm"  # on a worker's command line: every lane
BATCH_LANES = [f"pureebm-lane-{n}" for n in range(16)]
SYNC_QUEUE = "pureebm-sync"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def progress_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:progress"


def samples_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:samples"


def gone_key(job_id: str) -> str:
    return f"{PREFIX}:gone:{job_id}"  # hash: owner, reason, at; for retention_s


def webhook_delivery_key(delivery_id: str) -> str:
    return f"{PREFIX}:webhook:{delivery_id}"  # hash: url, owner, job, event, body, attempts


def webhook_throttle_key(job_id: str) -> str:
    return f"{PREFIX}:webhook-throttle:{job_id}"  # set while a progress event is too recent


def owner_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


def shard_job_id(job_id: str, shard: int) -> str:
    return f"{job_id}-shard-{shard}"


def finalize_job_id(job_id: str) -> str:
    return f"{job_id}-finalize"


def score_job_id(job_id: str, shard: int) -> str:
    return f"{job_id}-score-{shard}"


def select_job_id(job_id: str) -> str:
    return f"{job_id}-select"


RQ_SHARD_JOBS = (score_job_id, shard_job_id)  # a filter's shards are at most the scoring ones
