"""The RQ job functions a worker runs: purify one shard, then assemble the result.

Both are idempotent: a shard's output file appears atomically (written aside,
then renamed), so a shard retried after its worker died rewrites the same
file and no image is lost or doubled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rq import get_current_job

from pureebm.formats import open_container
from pureebm.pipeline import PurifiedImage, purify_pictures
from pureebm.registry import LoadedModel, Registry
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
class WorkerContext:
    store: JobStore
    models: ModelCache
    device: torch.device
    batch_size: int
    name: str


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
        return 0
    if store.transition(job_id, JobStatus.queued, JobStatus.running):
        store.update(job_id, started_at=time.time())
    store.set_shard_progress(job_id, shard, 0)
    started = time.perf_counter()
    try:
        results = run_shard(ctx, record, shard, start, stop)
    except JobCanceled:
        log.info("shard stopped: job canceled", extra={"job_id": job_id, "shard": shard})
        return 0
    except Exception as e:
        store.update(job_id, error=f"shard {shard}: {e}")
        raise
    seconds = time.perf_counter() - started
    metrics.record_shard(store.redis, ctx.name, len(results), seconds)
    log.info(
        "shard done",
        extra={"job_id": job_id, "shard": shard, "images": len(results), "seconds": seconds},
    )
    return len(results)


def run_shard(
    ctx: WorkerContext, record: JobRecord, shard: int, start: int, stop: int
) -> list[PurifiedImage]:
    store, settings = ctx.store, ctx.store.settings
    model = ctx.models.get(record.params.model or settings.default_model)
    params = record.params.langevin(model.manifest.langevin.params())
    container = open_container(store.input_path(record), settings.limits)
    names = set(container.image_names()[start:stop])
    pictures = container.iter_images(names)
    results: list[PurifiedImage] = []
    batches = purify_pictures(
        model, pictures, params, ctx.batch_size, ctx.device, record.params.seed, start
    )
    for item in batches:
        results.append(item)
        if len(results) % ctx.batch_size == 0 or len(results) == len(names):
            store.set_shard_progress(record.id, shard, len(results))
            current = store.get(record.id)
            if current is None or current.status not in ACTIVE:
                raise JobCanceled(record.id)
    write_shard(store.shard_path(record.id, shard), results)
    return results


def write_shard(path: Path, results: list[PurifiedImage]) -> None:
    """Write aside, then rename: readers see the whole shard or none of it."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        np.savez(
            f,
            names=np.array([r.name for r in results]),
            energy_before=np.array([r.energy_before for r in results], np.float32),
            energy_after=np.array([r.energy_after for r in results], np.float32),
            **{f"image_{i}": r.rgb for i, r in enumerate(results)},
        )
    os.replace(partial, path)


class ShardReader:
    """Purified pixels by member name, loading one shard file at a time."""

    def __init__(self, store: JobStore, record: JobRecord, names: list[str]) -> None:
        self.store, self.record = store, record
        self.index = {name: i for i, name in enumerate(names)}
        self.loaded: tuple[int, dict[str, np.ndarray]] | None = None

    def shard(self, shard: int) -> dict[str, np.ndarray]:
        if self.loaded is None or self.loaded[0] != shard:
            with np.load(self.store.shard_path(self.record.id, shard), allow_pickle=False) as f:
                names = [str(n) for n in f["names"]]
                self.loaded = (shard, {n: f[f"image_{i}"] for i, n in enumerate(names)})
        return self.loaded[1]

    def pixels(self, name: str) -> np.ndarray:
        return self.shard(self.index[name] // self.record.shard_size)[name]

    def energies(self) -> list[dict[str, float | str]]:
        rows = []
        for shard in range(self.record.shards):
            with np.load(self.store.shard_path(self.record.id, shard), allow_pickle=False) as f:
                for name, before, after in zip(
                    f["names"], f["energy_before"], f["energy_after"], strict=True
                ):
                    rows.append(
                        {
                            "name": str(name),
                            "energy_before": float(before),
                            "energy_after": float(after),
                        }
                    )
        return rows


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
    if record is None or record.status not in ACTIVE:
        return None
    missing = [s for s in range(record.shards) if not store.shard_path(job_id, s).exists()]
    if missing:
        fail(store, record, record.error or f"shards {missing} did not finish")
        return None
    try:
        return assemble(ctx, store, record)
    except Exception as e:
        current = get_current_job()
        if current is None or not current.retries_left:
            fail(store, record, f"finalising failed: {e}")
        raise


def assemble(ctx: WorkerContext, store: JobStore, record: JobRecord) -> str:
    job_id = record.id
    container = open_container(store.input_path(record), store.settings.limits)
    reader = ShardReader(store, record, container.image_names())
    result = store.result_path(record)
    partial = result.with_name(".partial." + result.name)
    container.write(partial, reader.pixels)
    os.replace(partial, result)
    model = ctx.models.registry.manifest(record.params.model or store.settings.default_model)
    params = record.params.langevin(model.langevin.params())
    report = {
        "job": job_id,
        "model": f"{model.name}:{model.version}",
        "steps": params.steps,
        "eps": params.eps,
        "tau": params.tau,
        "seed": record.params.seed,
        "images": reader.energies(),
    }
    report_path = store.report_path(job_id)
    partial_report = report_path.with_name(".partial." + report_path.name)
    partial_report.write_text(json.dumps(report))
    os.replace(partial_report, report_path)
    store.update(job_id, finished_at=time.time())
    store.transition(job_id, JobStatus.running, JobStatus.finished)
    log.info("job finished", extra={"job_id": job_id, "images": record.images})
    return str(result)
