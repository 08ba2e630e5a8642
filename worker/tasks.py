"""The RQ job functions a worker runs: purify one shard, then assemble the result.

Both are idempotent: a shard's output file appears atomically (written aside,
then renamed), so a shard retried after its worker died rewrites the same
file and no image is lost or doubled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rq import get_current_job

from pureebm.archives import Container, open_container
from pureebm.atomic import atomic_path
from pureebm.images import Picture
from pureebm.langevin import Speedups
from pureebm.pipeline import Phases, purify_pictures
from pureebm.registry import LoadedModel, Registry
from pureebm.shards import OpenShard, ShardSet, write_shard
from service import metrics
from service.jobs import JobStore
from service.schemas import ACTIVE, JobRecord, JobStatus

log = logging.getLogger("pureebm.worker")


class JobCanceled(Exception):
    """Raised inside a running shard when its job was canceled or deleted."""


@dataclass
class ModelCache:
    """Loaded models kept warm on the worker's device, least recently used evicted."""

    registry: Registry
    device: torch.device
    capacity: int = 4
    models: OrderedDict[str, LoadedModel] = field(default_factory=OrderedDict)

    def get(self, ref: str) -> LoadedModel:
        manifest = self.registry.manifest(ref)
        key = f"{manifest.name}:{manifest.version}"
        if key not in self.models:
            self.models[key] = self.registry.load(key, self.device)
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
        self.models.move_to_end(key)
        return self.models[key]


@dataclass
class JobInput:
    """A job's input as a worker reads it: the container, and the images the API
    decoded while validating it (a prefix of them, in container order)."""

    container: Container
    decoded: OpenShard | None

    def pictures(self, start: int, stop: int) -> Iterator[tuple[str, Picture]]:
        """Images [start, stop) in container order: the API's decoded pixels where it
        kept them (each image is then decoded once per job), else decoded here."""
        names = self.container.image_names()
        kept = start
        if self.decoded is not None:
            kept = max(start, min(stop, len(self.decoded)))
            for position in range(start, kept):
                yield names[position], self.decoded.picture(position)
        if kept < stop:
            yield from self.container.iter_images(set(names[kept:stop]))

    def close(self) -> None:
        self.container.close()
        self.decoded = None  # the memory map closes with its last view


@dataclass
class WorkerContext:
    store: JobStore
    models: ModelCache
    device: torch.device
    batch_size: int
    name: str
    speedups: Speedups
    inputs: OrderedDict[Path, JobInput] = field(default_factory=OrderedDict)

    def open_input(self, record: JobRecord) -> JobInput:
        """The job's input, listed and checked once per worker: the shards of one job
        reuse it instead of re-reading the archive's directory."""
        path = self.store.input_path(record)
        if path not in self.inputs:
            decoded = self.store.decoded_path(record.id)
            self.inputs[path] = JobInput(
                open_container(path, self.store.settings.limits),
                OpenShard(decoded) if decoded.exists() else None,
            )
            while len(self.inputs) > 1:  # an npz input is held in memory
                self.inputs.popitem(last=False)[1].close()
        return self.inputs[path]

    def release_all(self) -> None:
        while self.inputs:
            self.inputs.popitem()[1].close()

    def release(self, record: JobRecord) -> None:
        """Close a job's input once the job needs no more shards from this worker, so
        that deleting its folder frees the disk."""
        job_input = self.inputs.pop(self.store.input_path(record), None)
        if job_input is not None:
            job_input.close()


CONTEXT: WorkerContext | None = None


def context() -> WorkerContext:
    if CONTEXT is None:
        raise RuntimeError("worker.tasks runs inside `pureebm worker`, which sets its context")
    return CONTEXT


def purify_shard(job_id: str, shard: int, start: int, stop: int) -> int:
    """Purify images [start, stop) of the job's input into shards/<shard>.npz."""
    ctx = context()
    store = ctx.store
    record = store.get(job_id)
    if record is None or record.status not in ACTIVE:
        if record is not None:
            ctx.release(record)
        return 0
    if store.transition(job_id, JobStatus.queued, JobStatus.running):
        store.update(job_id, started_at=time.time())
    store.set_shard_progress(job_id, shard, 0)
    started = time.perf_counter()
    phases = Phases()
    try:
        images = run_shard(ctx, record, shard, start, stop, phases)
    except JobCanceled:
        log.info("shard stopped: job canceled", extra={"job_id": job_id, "shard": shard})
        ctx.release(record)
        return 0
    except Exception as e:
        store.update(job_id, error=f"shard {shard}: {e}")
        raise
    seconds = time.perf_counter() - started
    metrics.record_shard(store.redis, ctx.name, images, seconds)
    log.info(
        "shard done",
        extra={
            "job_id": job_id,
            "shard": shard,
            "images": images,
            "seconds": seconds,
            **{f"{phase}_s": round(s, 4) for phase, s in phases.items()},
        },
    )
    return images


def run_shard(
    ctx: WorkerContext, record: JobRecord, shard: int, start: int, stop: int, phases: Phases
) -> int:
    """Stream the shard's purified images to its file; returns how many there were."""
    store, settings = ctx.store, ctx.store.settings
    model = ctx.models.get(record.params.model or settings.default_model)
    params = record.params.resolve(model.manifest.langevin)
    pictures = ctx.open_input(record).pictures(start, stop)
    batches = purify_pictures(
        model,
        pictures,
        params,
        ctx.batch_size,
        ctx.device,
        record.params.seed,
        start,
        phases,
        ctx.speedups,
    )
    with write_shard(store.shard_path(record.id, shard)) as writer, contextlib.closing(batches):
        for done, item in enumerate(batches, 1):
            with phases.time("write"):
                writer.add(item)
            if done % ctx.batch_size == 0 or done == stop - start:
                store.set_shard_progress(record.id, shard, done)
                current = store.get(record.id)
                if current is None or current.status not in ACTIVE:
                    raise JobCanceled(record.id)
    return stop - start


def fail(store: JobStore, record: JobRecord, error: str) -> None:
    store.update(record.id, error=error, finished_at=time.time())
    store.transition(record.id, record.status, JobStatus.failed)
    log.error("job failed", extra={"job_id": record.id, "error": error})


def finalize(job_id: str) -> str | None:
    """Assemble the result container and the energy report once every shard has ended.

    Idempotent: the result and the report are written aside and renamed, so a
    retry after a crash starts over cleanly. An error on the last attempt fails
    the job with the reason; earlier attempts leave it to RQ's retry.
    """
    ctx = context()
    store = ctx.store
    record = store.get(job_id)
    if record is None:
        return None
    try:
        if record.status not in ACTIVE:
            return None
        missing = [s for s in range(record.shards) if not store.shard_path(job_id, s).exists()]
        if missing:
            fail(store, record, record.error or f"shards {missing} did not finish")
            return None
        return assemble(ctx, store, record)
    except Exception as e:
        current = get_current_job()
        if current is None or not current.retries_left:
            fail(store, record, f"finalising failed: {e}")
        raise
    finally:
        ctx.release(record)  # the job needs nothing more from this worker


def assemble(ctx: WorkerContext, store: JobStore, record: JobRecord) -> str:
    job_id = record.id
    started = time.perf_counter()
    container = ctx.open_input(record).container
    paths = [store.shard_path(job_id, shard) for shard in range(record.shards)]
    purified = ShardSet(paths, record.shard_bounds, container.image_names())
    result = store.result_path(record)
    try:
        with atomic_path(result) as partial:
            container.write(partial, purified.picture)
    finally:
        purified.close()
    model = ctx.models.registry.manifest(record.params.model or store.settings.default_model)
    params = record.params.resolve(model.langevin)
    report = {
        "job": job_id,
        "model": f"{model.name}:{model.version}",
        "steps": params.steps,
        "eps": params.eps,
        "tau": params.tau,
        "seed": record.params.seed,
        "images": [row._asdict() for row in purified.energies()],
    }
    report_path = store.report_path(job_id)
    with atomic_path(report_path) as partial:
        partial.write_text(json.dumps(report))
    store.update(job_id, finished_at=time.time())
    store.transition(job_id, JobStatus.running, JobStatus.finished)
    seconds = time.perf_counter() - started
    log.info(
        "job finished",
        extra={"job_id": job_id, "images": record.images, "finalize_s": round(seconds, 4)},
    )
    return str(result)
