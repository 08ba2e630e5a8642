"""The job store: a job's record in Redis (a hash), its status changed only by
compare-and-set, the owner's quota checked and taken in one step, Idempotency-Key
bindings, and progress with a sliding-window rate. The job's files are in its
folder (``folders``); its work is on the queue (``queue``)."""

from __future__ import annotations

import json
import logging
import shutil
import time

from redis import Redis

from jobs.folders import JobFolders
from jobs.keys import (
    CANCELED_KEY,
    DISK_RESERVED_KEY,
    JOB_ID,
    KEY_GRACE_S,
    STATES_KEY,
    WEBHOOK_PROGRESS_KEY,
    gone_key,
    idempotency_key,
    job_key,
    owner_key,
    progress_key,
    samples_key,
)
from jobs.outbox import queue_delivery
from jobs.record import ACTIVE, JobRecord, JobStatus, Progress, WebhookEvent
from jobs.settings import JobSettings

log = logging.getLogger("pureebm.jobs")

# Compare-and-set of a job's status: the transition happens only from the expected state.
SET_STATUS_IF = """
if redis.call('hget', KEYS[1], 'status') == ARGV[1] then
  redis.call('hset', KEYS[1], 'status', ARGV[2])
  redis.call('hset', KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
"""


# Writes for a job that may have been deleted meanwhile (a cancel, the cleaner): they
# happen only while its record exists, and the progress hash expires with the record.
UPDATE_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
"""
# A shard's count only rises: a retried shard starts again from 0, and holds at
# the count it had reached until the retry passes it. It also appends "time:images
# done in all shards" to the job's recent samples, from which the API computes a
# sliding-window rate.
SET_PROGRESS_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local reached = tonumber(redis.call('hget', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > reached then redis.call('hset', KEYS[2], ARGV[1], ARGV[2]) end
local done = 0
for _, v in ipairs(redis.call('hvals', KEYS[2])) do done = done + tonumber(v) end
redis.call('rpush', KEYS[3], ARGV[3] .. ':' .. done)
redis.call('ltrim', KEYS[3], -tonumber(ARGV[4]), -1)
local expires_at = redis.call('expiretime', KEYS[1])
if expires_at > 0 then
  redis.call('expireat', KEYS[2], expires_at)
  redis.call('expireat', KEYS[3], expires_at)
end
return 1
"""
# Saves a new job only if its owner has fewer than ARGV[1] active jobs: the quota's
# check and the record's creation in one step, so concurrent uploads cannot both
# take the last slot. KEYS: the job's hash, the owner's set, the states hash.
# ARGV: limit, job id, created_at, expires_at, state, the active states (2), then
# the hash's field/value pairs.
SAVE_WITHIN_QUOTA = """
local active = 0
for _, id in ipairs(redis.call('zrange', KEYS[2], 0, -1)) do
  local state = redis.call('hget', KEYS[3], id)
  if state == ARGV[6] or state == ARGV[7] then active = active + 1 end
end
if active >= tonumber(ARGV[1]) then return 0 end
for i = 8, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('expireat', KEYS[1], ARGV[4])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[2])
redis.call('hset', KEYS[3], ARGV[2], ARGV[5])
return 1
"""
# Deletes a key only while it still holds ARGV[1]: a binding released as stale is not
# one a concurrent request has just made.
DELETE_IF_EQUAL = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
RATE_WINDOW_S = 30.0  # images/s and eta come from the progress of the last 30 s
RATE_SAMPLES = 256  # at most this many recent samples are kept per job


class JobStore:
    def __init__(self, redis: Redis, settings: JobSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.folders = JobFolders(settings.jobs_dir)
        self.set_status_if = redis.register_script(SET_STATUS_IF)
        self.update_if_exists = redis.register_script(UPDATE_IF_EXISTS)
        self.set_progress_if_exists = redis.register_script(SET_PROGRESS_IF_EXISTS)
        self.save_within_quota_script = redis.register_script(SAVE_WITHIN_QUOTA)
        self.delete_if_equal = redis.register_script(DELETE_IF_EQUAL)

    # -- records ----------------------------------------------------------------

    @staticmethod
    def encoded(record: JobRecord) -> dict[str, str | int | float]:
        fields = record.model_dump(mode="json", exclude_none=True)
        fields["params"] = json.dumps(fields["params"])
        fields["shard_bounds"] = json.dumps(fields["shard_bounds"])
        fields["warnings"] = json.dumps(fields["warnings"])
        fields["sync"] = int(record.sync)
        if record.webhook is not None:
            fields["webhook"] = record.webhook.model_dump_json()
        return fields

    def save_within_quota(self, record: JobRecord, limit: int) -> bool:
        """Save a new job unless its owner already has ``limit`` active ones, atomically."""
        pairs = [str(item) for pair in self.encoded(record).items() for item in pair]
        keys = [job_key(record.id), owner_key(record.owner), STATES_KEY]
        args = [limit, record.id, record.created_at, int(record.expires_at) + KEY_GRACE_S]
        args += [record.status.value, *(state.value for state in ACTIVE), *pairs]
        return bool(self.save_within_quota_script(keys=keys, args=args))

    def save(self, record: JobRecord) -> None:
        """Save a job whatever its owner's quota."""
        self.save_within_quota(record, 2**53)

    def get(self, job_id: str) -> JobRecord | None:
        if not JOB_ID.match(job_id):
            return None
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        fields["params"] = json.loads(fields["params"])
        fields["shard_bounds"] = json.loads(fields["shard_bounds"])
        fields["warnings"] = json.loads(fields.get("warnings", "[]"))
        fields["sync"] = fields.get("sync") == "1"
        if "webhook" in fields:
            fields["webhook"] = json.loads(fields["webhook"])
        return JobRecord.model_validate(fields)

    def get_owned(self, job_id: str, owner: str) -> JobRecord | None:
        """The job, or None when it does not exist or belongs to another key."""
        record = self.get(job_id)
        return record if record is not None and record.owner == owner else None

    def idempotent_job(self, owner: str, key: str) -> tuple[JobRecord, str] | None:
        """The job created under this owner's Idempotency-Key and the fingerprint of
        the request that created it; None when the key is unused. A key whose job is
        gone (deleted, expired) is released: it starts afresh."""
        name = idempotency_key(owner, key)
        held = self.redis.get(name)
        if held is None:
            return None
        job_id, fingerprint = held.decode().split(":")
        record = self.get_owned(job_id, owner)
        if record is None:
            self.delete_if_equal(keys=[name], args=[held])
            return None
        return record, fingerprint

    def claim_idempotency_key(self, owner: str, key: str, job_id: str, fingerprint: str) -> bool:
        """Bind the key to the job; False if another job holds it already."""
        name = idempotency_key(owner, key)
        value = f"{job_id}:{fingerprint}"
        return bool(self.redis.set(name, value, nx=True, ex=self.settings.retention_s))

    def update(self, job_id: str, **fields: str | float) -> bool:
        """Set fields of an existing job; a no-op (False) once it has been deleted."""
        args = [item for pair in fields.items() for item in pair]
        return bool(self.update_if_exists(keys=[job_key(job_id)], args=args))

    def mark_ended(self, job_id: str, **fields: str | float) -> bool:
        """Record that a job ended now (with ``fields``, an error say): its retention
        counts from here, so a long job is never expired while it runs."""
        now = time.time()
        expires_at = now + self.settings.retention_s
        updated = self.update(job_id, finished_at=now, expires_at=expires_at, **fields)
        if updated:
            self.redis.expireat(job_key(job_id), int(expires_at) + KEY_GRACE_S)
        return updated

    def transition(self, job_id: str, expected: JobStatus, new: JobStatus) -> bool:
        """Move a job from ``expected`` to ``new``; False if it was in another state."""
        keys = [job_key(job_id), STATES_KEY]
        return bool(self.set_status_if(keys=keys, args=[expected.value, new.value, job_id]))

    def owned_ids(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        ids = self.redis.zrevrange(owner_key(owner), offset, offset + limit - 1)
        return [i.decode() for i in ids], self.redis.zcard(owner_key(owner))

    def active_count(self, owner: str) -> int:
        ids = [i.decode() for i in self.redis.zrange(owner_key(owner), 0, -1)]
        states = self.redis.hmget(STATES_KEY, ids) if ids else []
        return sum(s is not None and s.decode() in ACTIVE for s in states)

    # -- disk reservations ------------------------------------------------------

    def reserve_disk(self, job_id: str, nbytes: int) -> None:
        """Hold ``nbytes`` of the data volume for an admitted job until it ends."""
        self.redis.hset(DISK_RESERVED_KEY, job_id, nbytes)

    def reserved_disk(self) -> int:
        """Bytes held for the jobs still active; the reservations of jobs that ended
        (however they ended) are dropped here."""
        held = {k.decode(): int(v) for k, v in self.redis.hgetall(DISK_RESERVED_KEY).items()}
        if not held:
            return 0
        states = self.redis.hmget(STATES_KEY, list(held))
        ended = [
            i for i, s in zip(held, states, strict=True) if s is None or s.decode() not in ACTIVE
        ]
        if ended:
            self.redis.hdel(DISK_RESERVED_KEY, *ended)
        return sum(n for i, n in held.items() if i not in ended)

    # -- progress ---------------------------------------------------------------

    def set_shard_progress(
        self, job_id: str, shard: int | str, done: float, now: float | None = None
    ) -> None:
        """Images done in one shard, counted once however often it is retried, and
        never less than it has shown; a fraction for the images inside a chain (the
        share of its steps run), so a long chain shows its rate and eta as it goes."""
        now = time.time() if now is None else now
        keys = [job_key(job_id), progress_key(job_id), samples_key(job_id)]
        self.set_progress_if_exists(keys=keys, args=[str(shard), done, repr(now), RATE_SAMPLES])

    def progress(self, record: JobRecord, now: float | None = None) -> Progress:
        """Images done of the total; while the job runs, images/s and eta from the
        last RATE_WINDOW_S seconds (a job that speeds up or slows down shows it at
        once), over the whole run once it has ended."""
        now = time.time() if now is None else now
        if record.status == JobStatus.finished:
            done = record.work
        else:
            shards = sum(float(v) for v in self.redis.hvals(progress_key(record.id)))
            done = min(int(shards) + record.passed_through, record.work)
        if record.status in ACTIVE:
            rate = self.recent_rate(record.id, now)
            left = max(record.work - record.passed_through - shards, 0)  # fractions count
            eta = left / rate if rate else None
        else:
            ran_s = (record.finished_at or now) - (record.started_at or now)
            rate, eta = (done / max(ran_s, 1e-6) if record.started_at and done else None), 0.0
        return Progress(done=done, total=record.work, images_per_s=rate, eta_s=eta)

    def recent_rate(self, job_id: str, now: float) -> float | None:
        """Images/s between the oldest and the newest sample of the window, None
        until there are two."""
        samples = []
        for raw in self.redis.lrange(samples_key(job_id), 0, -1):
            at, done = raw.decode().split(":")
            if float(at) >= now - RATE_WINDOW_S:
                samples.append((float(at), float(done)))
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return None
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return max(d1 - d0, 0) / (t1 - t0)

    def announce(self, record: JobRecord, event: WebhookEvent) -> None:
        """Queue the job's ``event`` for its webhook (``jobs.outbox``), if it asked for
        it, with the job as it is now (``record``: as it was before, which says
        whether it asked). A job that asked for progress is watched from its start
        (``jobs.webhooks.WebhookSender``). Never raises: a webhook does not affect its
        job."""
        webhook = record.webhook
        if webhook is None:
            return
        try:
            if event == WebhookEvent.start and WebhookEvent.progress in webhook.events:
                self.redis.hsetnx(WEBHOOK_PROGRESS_KEY, record.id, 0)
            if event in webhook.events:
                current = self.get(record.id) or record
                queue_delivery(self.redis, current, event, webhook.url, self.progress(current))
        except Exception:
            log.exception("webhook event not queued", extra={"job_id": record.id, "event": event})

    def mark_canceled(self, record: JobRecord) -> bool:
        """Cancel an active job (its RQ jobs are the queue's to stop); False if it had
        ended already."""
        for status in ACTIVE:
            if self.transition(record.id, status, JobStatus.canceled):
                self.mark_ended(record.id)
                self.redis.incr(CANCELED_KEY)
                self.announce(record, WebhookEvent.completed)
                return True
        return False

    def fail(self, record: JobRecord, error: str) -> bool:
        """Fail an active job with the reason; its files are deleted at once (a failed
        job has no result, and a full disk is a common reason), its record stays
        until retention ends."""
        self.mark_ended(record.id, error=error)  # first: a failed job always shows why
        if not self.transition(record.id, record.status, JobStatus.failed):
            return False
        shutil.rmtree(self.folders.folder(record.id), ignore_errors=True)
        self.announce(record, WebhookEvent.completed)
        return True

    def delete(self, record: JobRecord, reason: str | None = None) -> None:
        """Remove the job's folder and every key that names it; with ``reason``,
        leave a note of when and why for its owner (``gone``), kept retention_s."""
        shutil.rmtree(self.folders.folder(record.id), ignore_errors=True)
        with self.redis.pipeline() as pipe:
            pipe.delete(job_key(record.id), progress_key(record.id), samples_key(record.id))
            pipe.zrem(owner_key(record.owner), record.id)
            pipe.hdel(STATES_KEY, record.id)
            if reason is not None:
                note = {"owner": record.owner, "reason": reason, "at": time.time()}
                pipe.hset(gone_key(record.id), mapping=note)
                pipe.expire(gone_key(record.id), self.settings.retention_s)
            pipe.execute()

    def gone(self, job_id: str, owner: str) -> tuple[str, float] | None:
        """Why and when ``owner``'s job ``job_id`` was deleted, if it was (recently)."""
        note = {k.decode(): v.decode() for k, v in self.redis.hgetall(gone_key(job_id)).items()}
        if note.get("owner") != owner:
            return None
        return note["reason"], float(note["at"])
