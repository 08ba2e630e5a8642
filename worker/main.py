"""A long-lived worker process per device: `pureebm worker --device cuda:0`.

RQ's default worker forks a child per job; CUDA cannot be re-initialised in a
forked child and reloading the model per job wastes time, so this worker runs
jobs in its own process (RQ's SimpleWorker) with the models cached and warm.

SimpleWorker registers a running job for ``job_timeout + 60`` seconds and never
renews it, so a worker killed with SIGKILL would hold its shard for hours. This
worker instead renews a short lease (``worker_lease_s``) from a heartbeat thread
while a job runs; when the process dies the lease lapses, and RQ's registry
cleanup (which any live worker runs every lease) hands the shard to its retry.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid

import torch
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

from jobs.folders import make_private
from jobs.keys import BATCH_LANES
from jobs.logs import configure_logging
from jobs.queue import JobQueue, worker_queues
from jobs.settings import JobSettings
from jobs.store import JobStore
from pureebm.langevin import Speedups, resolve_device
from pureebm.registry import Registry
from worker import tasks

log = logging.getLogger("pureebm.worker")


class LeasedWorker(SimpleWorker):
    """SimpleWorker whose running job holds a lease renewed every lease/3 seconds."""

    lease_s = 30

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.lease_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self.renew_lease, args=(job, execution, stop), daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        if all(q.count == 0 for q in self.queues):  # idle: keep no job's files open
            tasks.context().release_all()
        self.set_state(WorkerStatus.IDLE)

    def reorder_queues(self, reference_queue: Queue) -> None:
        """The lane a job was just taken from goes behind the other lanes, so lanes
        (tenants) take turns; queues that are not lanes (sync) keep their place in
        front."""
        queues = self._ordered_queues
        lanes = [q for q in queues if q.name in BATCH_LANES]
        if reference_queue not in lanes:
            return
        after = lanes.index(reference_queue) + 1
        self._ordered_queues = [
            *(q for q in queues if q.name not in BATCH_LANES),
            *lanes[after:],
            *lanes[:after],
        ]

    def renew_lease(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # a missed renewal is retried; the job must not die of it
                log.exception("lease renewal failed", extra={"job_id": job.id})


def default_batch_size(device: torch.device) -> int:
    """Images of 32x32 per batch; larger images get proportionally fewer (pipeline.py)."""
    if device.type != "cuda":
        return 32
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return int(min(1024, max(64, gib * 12)))


def worker_context(
    redis: Redis, settings: JobSettings, device: torch.device, batch_size: int | None = None
) -> tasks.WorkerContext:
    """What worker.tasks runs with (tasks.CONTEXT): the job store, warm models, the
    device and the engine options."""
    store = JobStore(redis, settings)
    return tasks.WorkerContext(
        store=store,
        queue=JobQueue(store),
        models=tasks.ModelCache(Registry(settings.registry), device),
        device=device,
        batch_size=batch_size or default_batch_size(device),
        name=f"{socket.gethostname()}-{os.getpid()}-{device}-{uuid.uuid4().hex[:6]}",
        speedups=Speedups(
            channels_last=settings.channels_last, bf16=settings.bf16, compile=settings.compile
        ),
    )


def run_worker(
    settings: JobSettings,
    device: str = "auto",
    queues: list[str] | None = None,
    batch_size: int | None = None,
    burst: bool = False,
) -> None:
    configure_logging(settings.log_level)
    if settings.redis_url is None:
        raise SystemExit("pureebm worker needs PUREEBM_REDIS_URL (or --redis-url)")
    make_private(settings.data_dir)
    redis = Redis.from_url(settings.redis_url)
    tasks.CONTEXT = worker_context(redis, settings, resolve_device(device), batch_size)
    name, torch_device = tasks.CONTEXT.name, tasks.CONTEXT.device
    models = tasks.CONTEXT.models
    default = models.registry.verified_manifest(models.registry.default_ref(settings.default_model))
    if default.weights is not None:  # load before working (a JPEG preset has nothing to load)
        models.get(default.ref)
    LeasedWorker.lease_s = settings.worker_lease_s
    queue_names = worker_queues(queues)
    log.info(
        "worker ready",
        extra={"worker": name, "device": str(torch_device), "batch_size": tasks.CONTEXT.batch_size},
    )
    # Redis going away (a restart, a failover) stops RQ's loop with a ConnectionError;
    # the worker reconnects under a new name (the old registration may still exist).
    # A shard cut short meanwhile is retried once its lease lapses.
    for incarnation in itertools.count():
        started = time.monotonic()
        try:
            worker = LeasedWorker(
                [Queue(q, connection=redis) for q in queue_names],
                connection=redis,
                name=f"{name}-{incarnation}",
                worker_ttl=settings.worker_lease_s + 15,  # idle workers wake every lease
                maintenance_interval=settings.worker_lease_s,
            )
            # RQ's own INFO lines (a registry cleaned every lease, each job's name) only
            # at DEBUG: the worker logs its shards itself
            chatty = settings.log_level.upper() == "DEBUG"
            worker.work(burst=burst, logging_level="DEBUG" if chatty else "WARNING")
            return
        except RedisConnectionError as e:
            backoff = 1.0 if time.monotonic() - started > 60 else min(2.0**incarnation, 30.0)
            log.warning(f"lost Redis ({e}); reconnecting in {backoff:.0f} s")
            time.sleep(backoff)
