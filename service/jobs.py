"""Jobs: metadata in Redis, images in the job's folder, work on the RQ queue.

A job is split into shards of at most ``shard_size`` images and ``shard_pixels``
pixels (``pureebm.shards.cut_shards``). Each shard is one RQ job
(``worker.tasks.purify_shard``) and a finalising RQ job (``worker.tasks.finalize``)
that depends on all of them assembles the result.

A job with an energy filter runs two phases, since every image's energy is
needed before any is purified: one scoring RQ job per shard
(``worker.tasks.score_shard``), then a selecting job (``worker.tasks.select``)
that depends on them, ranks the energies, writes the selection and only then
queues the purification shards (the selected images of each shard) and the
finalising job. Every file a phase writes appears atomically, so either phase
can be retried.

Fair share: a job's RQ jobs go to its owner's lane, one of BATCH_LANES queues
(``pureebm-lane-<n>``, the owner's key hash modulo their number). Workers take the
lanes in turn (``worker.main.LeasedWorker.reorder_queues``), so a tenant with
thousands of shards queued delays another tenant's next shard by at most one
shard per lane, not by its whole backlog. Synchronous requests have their own
queue, ``pureebm-sync``, which workers always look at first. Redis keys:

    pureebm:job:<id>            hash: the JobRecord fields
    pureebm:job:<id>:progress   hash: shard index -> images done in that shard
    pureebm:owner:<owner>       sorted set: the owner's job ids by creation time
    pureebm:idem:<owner>:<key>  the job id created under an Idempotency-Key
    pureebm:states              hash: job id -> status (for /metrics)
    pureebm:canceled            counter: jobs canceled (for /metrics)

Job folder (``<data_dir>/jobs/<id>/``): ``input/<file>``, ``decoded.npz`` (the
images the API decoded while validating, up to ``max_decoded_bytes``),
``shards/<i>.npz``, ``result/<name>`` and ``report.json``; with a filter also
``shards/score-<i>.npy`` (each shard's energies) and ``selection.npz`` (the chosen
positions, and where each purification shard starts among them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import time
import zlib
from pathlib import Path

from redis import Redis
from rq import Queue, Retry, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job
from rq.job import JobStatus as RQStatus

from service.schemas import ACTIVE, JobRecord, JobStatus, Progress
from service.settings import Settings

PREFIX = "pureebm"
BATCH_QUEUE = "pureebm"  # on a worker's command line: every lane
BATCH_LANES = [f"pureebm-lane-{n}" for n in range(16)]
SYNC_QUEUE = "pureebm-sync"
STATES_KEY = f"{PREFIX}:states"
CANCELED_KEY = f"{PREFIX}:canceled"  # jobs canceled so far (their records are deleted)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
KEY_GRACE_S = 3600  # a job's keys outlive its expires_at by this, for the cleaner

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
# It also appends "time:images done in all shards" to the job's recent samples, from
# which the API computes a sliding-window rate.
SET_PROGRESS_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
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
RATE_WINDOW_S = 30.0  # images/s and eta come from the progress of the last 30 s
RATE_SAMPLES = 256  # at most this many recent samples are kept per job


ENDED_RQ_STATES = (RQStatus.FINISHED, RQStatus.FAILED, RQStatus.CANCELED, RQStatus.STOPPED)


MEDIA_TYPES = {
    ".png": "image/png",
    ".tif": "image/tiff",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".npz": "application/octet-stream",
}


def lane_of(owner: str) -> str:
    """The owner's batch queue (see "Fair share" above)."""
    return BATCH_LANES[zlib.crc32(owner.encode()) % len(BATCH_LANES)]


def worker_queues(names: list[str] | None) -> list[str]:
    """The queues a worker given ``names`` takes, BATCH_QUEUE standing for every lane;
    by default the sync queue, then the lanes."""
    names = names or [SYNC_QUEUE, BATCH_QUEUE]
    return [lane for name in names for lane in (BATCH_LANES if name == BATCH_QUEUE else [name])]


def media_type_of(result: Path) -> str:
    return MEDIA_TYPES.get(result.suffix, "application/octet-stream")


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def progress_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:progress"


def samples_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:samples"


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


class JobStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.set_status_if = redis.register_script(SET_STATUS_IF)
        self.update_if_exists = redis.register_script(UPDATE_IF_EXISTS)
        self.set_progress_if_exists = redis.register_script(SET_PROGRESS_IF_EXISTS)
        self.save_within_quota_script = redis.register_script(SAVE_WITHIN_QUOTA)

    # -- folders ----------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.settings.jobs_dir / job_id

    def input_path(self, record: JobRecord) -> Path:
        return self.folder(record.id) / "input" / record.input_file

    def decoded_path(self, job_id: str) -> Path:
        """The input's images as the API decoded them (a shard file; a prefix of them)."""
        return self.folder(job_id) / "decoded.npz"

    def shard_path(self, job_id: str, shard: int) -> Path:
        return self.folder(job_id) / "shards" / f"{shard:05d}.npz"

    def score_path(self, job_id: str, shard: int) -> Path:
        return self.folder(job_id) / "shards" / f"score-{shard:05d}.npy"

    def selection_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "selection.npz"

    def result_path(self, record: JobRecord) -> Path:
        return self.folder(record.id) / "result" / record.result_name

    def report_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "report.json"

    # -- records ----------------------------------------------------------------

    @staticmethod
    def encoded(record: JobRecord) -> dict[str, str | int | float]:
        fields = record.model_dump(mode="json", exclude_none=True)
        fields["params"] = json.dumps(fields["params"])
        fields["shard_bounds"] = json.dumps(fields["shard_bounds"])
        fields["sync"] = int(record.sync)
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
        fields["sync"] = fields.get("sync") == "1"
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
            self.redis.delete(name)
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

    def live_workers(self, queue_name: str = BATCH_LANES[0]) -> int:
        """Workers of a queue (by default: the batch workers, which take every lane)
        whose heartbeat is fresh. A worker beats at least once a lease (idle or busy),
        so one silent for 2 leases is dead, whatever its registration in Redis still
        says."""
        fresh_after = time.time() - 2 * self.settings.worker_lease_s
        workers = Worker.all(queue=Queue(queue_name, connection=self.redis))
        return sum(
            w.last_heartbeat is not None and w.last_heartbeat.timestamp() > fresh_after
            for w in workers
        )

    # -- progress ---------------------------------------------------------------

    def set_shard_progress(
        self, job_id: str, shard: int | str, done: int, now: float | None = None
    ) -> None:
        """Images done in one shard. A retried shard starts again from 0, so the
        aggregate never counts an image twice."""
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
            done = sum(int(v) for v in self.redis.hvals(progress_key(record.id)))
        if record.status in ACTIVE:
            rate = self.recent_rate(record.id, now)
            eta = (record.work - done) / rate if rate else None
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
                samples.append((float(at), int(done)))
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return None
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return max(d1 - d0, 0) / (t1 - t0)

    # -- the queue --------------------------------------------------------------

    def enqueue(self, record: JobRecord) -> None:
        """One RQ job per shard, and a finalising job that runs once all have ended;
        with a filter, scoring shards and the selecting job that queues the rest.
        Each is retried ``shard_retries`` times."""
        if record.params.filter is None:
            self.enqueue_purification(record, record.shard_bounds)
            return
        scoring = [
            self.queue(record).enqueue(
                "worker.tasks.score_shard",
                record.id,
                shard,
                start,
                stop,
                job_id=score_job_id(record.id, shard),
                **self.rq_options(),
            )
            for shard, (start, stop) in enumerate(itertools.pairwise(record.shard_bounds))
        ]
        self.queue(record).enqueue(
            "worker.tasks.select",
            record.id,
            job_id=select_job_id(record.id),
            depends_on=Dependency(jobs=scoring, allow_failure=True),
            **self.rq_options(),
        )

    def enqueue_purification(self, record: JobRecord, bounds: list[int]) -> None:
        """Purification shards cut at ``bounds`` (container positions, or positions in
        a filter's selection), and the finalising job that depends on them."""
        shards = [
            self.queue(record).enqueue(
                "worker.tasks.purify_shard",
                record.id,
                shard,
                start,
                stop,
                job_id=shard_job_id(record.id, shard),
                **self.rq_options(),
            )
            for shard, (start, stop) in enumerate(itertools.pairwise(bounds))
        ]
        self.queue(record).enqueue(
            "worker.tasks.finalize",
            record.id,
            job_id=finalize_job_id(record.id),
            depends_on=Dependency(jobs=shards, allow_failure=True) if shards else None,
            **self.rq_options(),
        )

    def queue(self, record: JobRecord) -> Queue:
        return Queue(SYNC_QUEUE if record.sync else lane_of(record.owner), connection=self.redis)

    def rq_options(self) -> dict:
        ttl, retries = self.settings.retention_s, self.settings.shard_retries
        return {
            "retry": Retry(max=retries) if retries else None,
            "job_timeout": self.settings.shard_timeout_s,
            "result_ttl": ttl,
            "failure_ttl": ttl,
        }

    def cancel(self, record: JobRecord) -> None:
        """Stop a queued or running job: queued shards never start, running ones stop
        at their next batch (they check the status)."""
        for status in ACTIVE:
            if self.transition(record.id, status, JobStatus.canceled):
                self.mark_ended(record.id)
                self.redis.incr(CANCELED_KEY)
                break
        ids = [make(record.id, i) for i in range(record.shards) for make in RQ_SHARD_JOBS]
        for rq_id in [*ids, select_job_id(record.id), finalize_job_id(record.id)]:
            # ValueError: RQ cannot cancel a started job whose execution record expired
            # with its dead worker; it comes back as abandoned, and finds the job canceled
            with contextlib.suppress(NoSuchJobError, InvalidJobOperation, ValueError):
                Job.fetch(rq_id, connection=self.redis).cancel()

    def fail(self, record: JobRecord, error: str) -> bool:
        """Fail an active job with the reason; its files are deleted at once (a failed
        job has no result, and a full disk is a common reason), its record stays
        until retention ends."""
        self.mark_ended(record.id, error=error)  # first: a failed job always shows why
        if not self.transition(record.id, record.status, JobStatus.failed):
            return False
        shutil.rmtree(self.folder(record.id), ignore_errors=True)
        return True

    def delete(self, record: JobRecord) -> None:
        """Remove the job's folder and every key that names it."""
        shutil.rmtree(self.folder(record.id), ignore_errors=True)
        with self.redis.pipeline() as pipe:
            pipe.delete(job_key(record.id), progress_key(record.id), samples_key(record.id))
            pipe.zrem(owner_key(record.owner), record.id)
            pipe.hdel(STATES_KEY, record.id)
            pipe.execute()

    def fail_stalled(self, now: float | None = None) -> int:
        """Fail active jobs that nothing will move on: their finalising RQ job (the one
        that ends every job) is gone or has ended without ending the job, for instance
        a worker killed during its last attempt, or Redis restarted without the queue.
        A filtered job is also moving while its selecting job (which queues the
        finalising one before it ends) is pending."""
        now = time.time() if now is None else now
        settle_s = 2 * self.settings.worker_lease_s  # between saving a job and queueing it
        failed = 0
        states = self.redis.hgetall(STATES_KEY)
        active = [job_id.decode() for job_id, state in states.items() if state.decode() in ACTIVE]
        for job_id in active:
            record = self.get(job_id)
            if record is None or record.status not in ACTIVE:
                continue
            # an active job's keys live on until retention_s after it ends (mark_ended)
            keep_until = int(now + self.settings.retention_s) + KEY_GRACE_S
            self.redis.expireat(job_key(job_id), keep_until, gt=True)
            if record.created_at > now - settle_s:
                continue
            enders = [finalize_job_id(record.id)]
            if record.params.filter is not None:
                enders.append(select_job_id(record.id))
            ended = all(self.rq_job_ended(rq_id) for rq_id in enders)
            error = record.error or "the job stalled: its work ended or was lost"
            if ended and self.fail(record, error):
                failed += 1
        return failed

    def rq_job_ended(self, rq_id: str) -> bool:
        try:
            return Job.fetch(rq_id, connection=self.redis).get_status() in ENDED_RQ_STATES
        except NoSuchJobError:
            return True

    def delete_expired(self, now: float | None = None) -> int:
        """The retention cleaner: delete ended jobs past ``expires_at`` (retention counts
        from a job's end: ``mark_ended``; a job still active is left to the stall
        check) and orphaned folders."""
        now = time.time() if now is None else now
        deleted = 0
        for job_id in [k.decode() for k in self.redis.hkeys(STATES_KEY)]:
            record = self.get(job_id)
            if record is None:
                self.redis.hdel(STATES_KEY, job_id)
            elif record.expires_at < now and record.status not in ACTIVE:
                self.delete(record)
                deleted += 1
        if self.settings.jobs_dir.is_dir():
            for folder in self.settings.jobs_dir.iterdir():
                orphan = JOB_ID.match(folder.name) and not self.redis.exists(job_key(folder.name))
                if orphan and folder.stat().st_mtime < now - 3600:
                    shutil.rmtree(folder, ignore_errors=True)
        return deleted
