"""The job's work on RQ: which queue (the owner's lane, or the sync queue), one RQ
job per shard plus the finaliser (with a filter: scoring shards and the
selecting job first), cancelling them, and which workers are alive."""

from __future__ import annotations

import contextlib
import itertools
import time
import zlib

from rq import Queue, Retry, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job
from rq.job import JobStatus as RQStatus

from jobs.keys import (
    BATCH_LANES,
    BATCH_QUEUE,
    RQ_SHARD_JOBS,
    SYNC_QUEUE,
    finalize_job_id,
    score_job_id,
    select_job_id,
    shard_job_id,
)
from jobs.record import JobRecord, JobStatus, Progress
from jobs.store import JobStore

QUEUE_SCAN = 1000  # queue entries a job's position is looked for among
ENDED_RQ_STATES = (RQStatus.FINISHED, RQStatus.FAILED, RQStatus.CANCELED, RQStatus.STOPPED)


def lane_of(owner: str) -> str:
    """The owner's batch queue: one of BATCH_LANES, which workers take in turn, so
    that one tenant's backlog does not hold up another's next shard."""
    return BATCH_LANES[zlib.crc32(owner.encode()) % len(BATCH_LANES)]


def worker_queues(names: list[str] | None) -> list[str]:
    """The queues a worker given ``names`` takes, BATCH_QUEUE standing for every lane;
    by default the sync queue, then the lanes."""
    names = names or [SYNC_QUEUE, BATCH_QUEUE]
    return [lane for name in names for lane in (BATCH_LANES if name == BATCH_QUEUE else [name])]


class JobQueue:
    """The RQ side of the jobs in ``store``."""

    def __init__(self, store: JobStore) -> None:
        self.store, self.redis, self.settings = store, store.redis, store.settings

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

    def position(self, record: JobRecord) -> int | None:
        """How many other jobs' work waits ahead of a queued job's first RQ job in its
        lane (0: none; workers take the lanes in turn, so others' lanes interleave);
        None once that has left the queue, or lies past the first QUEUE_SCAN entries
        (a poll never scans a long backlog)."""
        first = (score_job_id if record.params.filter is not None else shard_job_id)(record.id, 0)
        queue = self.queue(record)
        index = self.redis.lpos(queue.key, first, maxlen=QUEUE_SCAN)
        if index is None:
            return None
        ahead = self.redis.lrange(queue.key, 0, index - 1) if index else []
        return len({rq_id.decode().partition("-")[0] for rq_id in ahead})

    def progress(self, record: JobRecord) -> Progress:
        """The store's progress, with a queued job's place in its queue."""
        progress = self.store.progress(record)
        if record.status == JobStatus.queued:
            progress.queue_position = self.position(record)
        return progress

    def cancel(self, record: JobRecord) -> None:
        """Stop a queued or running job: queued shards never start, running ones stop
        at their next batch (they check the status)."""
        self.store.mark_canceled(record)
        ids = [make(record.id, i) for i in range(record.shards) for make in RQ_SHARD_JOBS]
        for rq_id in [*ids, select_job_id(record.id), finalize_job_id(record.id)]:
            # ValueError: RQ cannot cancel a started job whose execution record expired
            # with its dead worker; it comes back as abandoned, and finds the job canceled
            with contextlib.suppress(NoSuchJobError, InvalidJobOperation, ValueError):
                Job.fetch(rq_id, connection=self.redis).cancel()

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

    def rq_job_ended(self, rq_id: str) -> bool:
        try:
            return Job.fetch(rq_id, connection=self.redis).get_status() in ENDED_RQ_STATES
        except NoSuchJobError:
            return True
