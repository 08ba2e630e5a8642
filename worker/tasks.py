"""The RQ job functions a worker runs: purify one shard, then assemble the result;
with an energy filter, score each shard and select first.

All are idempotent: every output file appears atomically (written aside, then
renamed), so a task retried after its worker died rewrites the same file and
no image is lost or doubled.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rq import get_current_job

from jobs.queue import JobQueue
from jobs.record import ACTIVE, ImageEnergy, JobRecord, JobStatus, Report, WebhookEvent
from jobs.stats import record_shard
from jobs.store import JobStore
from pureebm import interrupts
from pureebm.atomic import atomic_path
from pureebm.concurrency import Phases
from pureebm.containers import Container, open_container
from pureebm.filtering import selected_positions
from pureebm.images import FormatError, Picture
from pureebm.langevin import Speedups
from pureebm.pipeline import energies_of, purifier_for, purify_pictures, scorer_for
from pureebm.preview import MAX_SAMPLES, Sample, job_card
from pureebm.refs import parse_ref
from pureebm.registry import LoadedModel, Registry
from pureebm.shards import OpenShard, ShardSet, assemble, write_shard

log = logging.getLogger("pureebm.worker")


CANCEL_CHECK_S = 1.0  # how often a running chain asks whether its job was canceled


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
        """The model ``ref`` names; a job's refs are pinned (NAME:VERSION, and a version
        never changes), so a warm model costs no registry read."""
        name, version = parse_ref(ref)
        if version is None:
            version = self.registry.manifest(ref).version
        key = f"{name}:{version}"
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

    def pictures(self, positions: Sequence[int]) -> Iterator[tuple[str, Picture]]:
        """The images at ``positions`` (ascending) in container order: the API's decoded
        pixels where it kept them (each image is then decoded once per job), else
        decoded here."""
        names = self.container.image_names()
        decoded = 0 if self.decoded is None else len(self.decoded)
        rest = [p for p in positions if p >= decoded]
        for position in positions:
            if position >= decoded:
                break
            yield names[position], self.decoded.picture(position)  # type: ignore[union-attr]
        if rest:
            yield from self.container.iter_images(rest)

    def close(self) -> None:
        self.container.close()
        self.decoded = None  # the memory map closes with its last view


@dataclass
class WorkerContext:
    store: JobStore
    queue: JobQueue
    models: ModelCache
    device: torch.device
    batch_size: int
    name: str
    speedups: Speedups
    inputs: OrderedDict[Path, JobInput] = field(default_factory=OrderedDict)

    def open_input(self, record: JobRecord) -> JobInput:
        """The job's input, listed and checked once per worker: the shards of one job
        reuse it instead of re-reading the archive's directory."""
        path = self.store.folders.input_path(record)
        if path not in self.inputs:
            decoded = self.store.folders.decoded_path(record.id)
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
        job_input = self.inputs.pop(self.store.folders.input_path(record), None)
        if job_input is not None:
            job_input.close()


CONTEXT: WorkerContext | None = None


def context() -> WorkerContext:
    if CONTEXT is None:
        raise RuntimeError("worker.tasks runs inside `pureebm worker`, which sets its context")
    return CONTEXT


def active_record(ctx: WorkerContext, job_id: str) -> JobRecord | None:
    """The job if it still runs (marked running from here on), else None."""
    record = ctx.store.get(job_id)
    if record is None or record.status not in ACTIVE:
        if record is not None:
            ctx.release(record)
        return None
    if ctx.store.transition(job_id, JobStatus.queued, JobStatus.running):
        ctx.store.update(job_id, started_at=time.time())
        ctx.store.announce(record, WebhookEvent.start)
    return record


def hold(ctx: WorkerContext, point: str) -> None:
    """A pause that a test (or an operator looking at a worker) releases: while the
    file ``hold_file`` names exists and is empty or names ``point``, a shard waits
    here after its first image (point "shard") or inside a chain once it has
    reported progress ("chain"), a finaliser before it writes ("finalize"), with
    their leases renewed meanwhile."""
    path = ctx.store.settings.hold_file
    while path is not None and path.exists():
        with contextlib.suppress(FileNotFoundError):
            points = path.read_text().split()
            if points and point not in points:
                return
        time.sleep(0.1)


def stop_if_canceled(store: JobStore, job_id: str) -> None:
    current = store.get(job_id)
    if current is None or current.status not in ACTIVE:
        raise JobCanceled(job_id)


def score_shard(job_id: str, shard: int, start: int, stop: int) -> int:
    """A filtered job's first phase: the energies and pixel counts of images
    [start, stop), written to shards/score-<shard>.npy (2 x n)."""
    ctx = context()
    record = active_record(ctx, job_id)
    if record is None:
        return 0
    store, progress = ctx.store, f"score-{shard}"
    store.set_shard_progress(job_id, progress, 0)
    scorer = scorer_for(ctx.models.get(record.params.model), ctx.device, ctx.speedups)
    pictures = ctx.open_input(record).pictures(range(start, stop))
    energies, pixels = [], []
    try:
        for energy, count in energies_of(scorer, pictures, ctx.batch_size):
            energies.append(energy)
            pixels.append(count)
            if len(energies) % ctx.batch_size == 0 or len(energies) == stop - start:
                store.set_shard_progress(job_id, progress, len(energies))
                stop_if_canceled(store, job_id)
    except JobCanceled:
        ctx.release(record)
        return 0
    except Exception as e:
        store.update(job_id, error=f"scoring shard {shard}: {e}")
        raise
    with atomic_path(store.folders.score_path(job_id, shard)) as partial, partial.open("wb") as f:
        np.save(f, np.array([energies, pixels], np.float64), allow_pickle=False)
    return len(energies)


def select(job_id: str) -> int | None:
    """Rank a filtered job's energies, write its selection (the chosen positions, and
    where each purification shard starts among them: the chosen images of each
    scoring shard, so every shard keeps the pixel budget), then queue the
    purification. Fails the job, on its last attempt, if a scoring shard is missing."""
    ctx = context()
    store = ctx.store
    record = store.get(job_id)
    if record is None or record.status not in ACTIVE:
        return None
    try:
        scores = [store.folders.score_path(job_id, s) for s in range(record.shards)]
        missing = [s for s, path in enumerate(scores) if not path.exists()]
        if missing:
            fail(store, record, record.error or f"scoring shards {missing} did not finish")
            return None
        energies, pixels = np.concatenate([np.load(path) for path in scores], axis=1)
        manifest = ctx.models.get(record.params.model).manifest  # type: ignore[arg-type]
        rule, threshold = record.params.filter, manifest.energy_threshold
        chosen = np.array(selected_positions(energies, rule, threshold, pixels), np.int64)
        per_shard = np.diff(np.searchsorted(chosen, record.shard_bounds))
        bounds = np.concatenate([[0], np.cumsum(per_shard[per_shard > 0])]).astype(np.int64)
        with atomic_path(store.folders.selection_path(job_id)) as partial, partial.open("wb") as f:
            np.savez(f, positions=chosen, bounds=bounds, energies=energies)
        store.update(job_id, selected=len(chosen))
        ctx.queue.enqueue_purification(record, bounds.tolist())
        return len(chosen)
    except Exception as e:
        current = get_current_job()
        if current is None or not current.retries_left:
            fail(store, record, f"selecting failed: {e}")
        raise


def purify_shard(job_id: str, shard: int, start: int, stop: int) -> int:
    """Purify images [start, stop) of the job's input (of its filter's selection, with
    a filter) into shards/<shard>.npz."""
    ctx = context()
    store = ctx.store
    record = active_record(ctx, job_id)
    if record is None:
        return 0
    store.set_shard_progress(job_id, shard, 0)
    started = time.perf_counter()
    phases = Phases()
    try:
        images = run_shard(ctx, record, shard, start, stop, phases)
    except JobCanceled:
        log.info("shard stopped: job canceled", extra={"job_id": job_id, "shard": shard})
        ctx.release(record)
        return 0
    except FormatError as e:  # the input's fault: the same on every attempt
        fail(store, record, f"shard {shard}: {e}")
        ctx.release(record)
        return 0
    except Exception as e:
        store.update(job_id, error=f"shard {shard}: {e}")
        raise
    seconds = time.perf_counter() - started
    record_shard(store.redis, ctx.name, images, seconds)
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
    store = ctx.store
    params = record.params
    model = None if params.model is None else ctx.models.get(params.model)
    purifier = purifier_for(params.purifier, model, ctx.models.get, ctx.device, ctx.speedups)
    chosen = purification_plan(store, record)[1]
    positions = range(start, stop) if chosen is None else chosen[start:stop]
    pictures = ctx.open_input(record).pictures(positions)
    batches = purify_pictures(purifier, pictures, ctx.batch_size, params.seed, positions, phases)
    shard_path = store.folders.shard_path(record.id, shard)
    done = 0

    def check(images_done: float) -> None:
        """Inside a batch's chain: stop if canceled, and count the images in flight
        by the chain's share of steps, so a slow purifier shows a rate at once."""
        stop_if_canceled(store, record.id)
        counted = done + images_done
        store.set_shard_progress(record.id, shard, counted)
        if counted >= done + 1:
            hold(ctx, "chain")

    canceled = interrupts.checking(check, CANCEL_CHECK_S)
    with write_shard(shard_path) as writer, contextlib.closing(batches), canceled:
        for done, item in enumerate(batches, 1):
            with phases.time("write"):
                writer.add(item)
            if done == 1 or done % ctx.batch_size == 0 or done == stop - start:
                store.set_shard_progress(record.id, shard, done)  # the first image at once
                stop_if_canceled(store, record.id)
            if done == 1:
                hold(ctx, "shard")
    return stop - start


def purification_plan(
    store: JobStore, record: JobRecord
) -> tuple[list[int], list[int] | None, list[float] | None]:
    """Where the purification shards start (among the purified images), the container
    positions of the images they purify (None: all of them) and, with a filter,
    every image's energy (its selection file, written by ``select``)."""
    if record.params.filter is None:
        return record.shard_bounds, None, None
    with np.load(store.folders.selection_path(record.id), allow_pickle=False) as saved:
        return saved["bounds"].tolist(), saved["positions"].tolist(), saved["energies"].tolist()


def fail(store: JobStore, record: JobRecord, error: str) -> None:
    if store.fail(record, error):
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
        shards = len(purification_plan(store, record)[0]) - 1
        missing = [s for s in range(shards) if not store.folders.shard_path(job_id, s).exists()]
        if missing:
            fail(store, record, record.error or f"shards {missing} did not finish")
            return None
        return finish(ctx, store, record)
    except FormatError as e:  # the input's fault: the same on every attempt
        fail(store, record, f"finalising failed: {e}")
        return None
    except Exception as e:
        current = get_current_job()
        if current is None or not current.retries_left:
            fail(store, record, f"finalising failed: {e}")
        raise
    finally:
        ctx.release(record)  # the job needs nothing more from this worker


def write_preview(ctx: WorkerContext, record: JobRecord, report: Report, shards: ShardSet) -> None:
    """The job's card beside its report: up to MAX_SAMPLES purified images as sent,
    purified and their difference, and the scores with the filter's cut. A job whose
    card cannot be drawn still finishes (the card is for looking, not for use)."""
    rows = report.images
    picked = [position for position, row in enumerate(rows) if row.purified][:MAX_SAMPLES]
    try:
        sent = ctx.open_input(record).pictures(picked)
        samples = [
            Sample(name, picture.rgb, shards.picture(position).rgb, rows[position].psnr)
            for position, (name, picture) in zip(picked, sent, strict=True)
        ]
        purified = [row.energy_before for row in rows if row.purified]
        cut = min(purified) if purified and len(purified) < len(rows) else None
        title = (
            f"job {record.id}: {report.purified} of {len(rows)} images purified "
            f"({record.params.purifier.summary()}, {record.params.model or 'no model'})"
        )
        card = job_card(samples, [row.energy_before for row in rows], cut, title)
        with atomic_path(ctx.store.folders.preview_path(record.id)) as partial:
            card.save(partial, "PNG")
    except Exception:
        log.exception("preview not drawn", extra={"job_id": record.id})
    finally:
        shards.close()


def finish(ctx: WorkerContext, store: JobStore, record: JobRecord) -> str:
    """Write the result container and the report, then mark the job finished."""
    hold(ctx, "finalize")
    job_id = record.id
    started = time.perf_counter()
    container = ctx.open_input(record).container
    bounds, chosen, scores = purification_plan(store, record)
    paths = [store.folders.shard_path(job_id, shard) for shard in range(len(bounds) - 1)]
    result = store.folders.result_path(record)
    energies = assemble(container, result, paths, bounds, chosen, scores)
    params = record.params.model_dump(include=set(Report.model_fields))
    report = Report(
        job=job_id,
        **params,
        score=record.params.purifier.score,
        purified=sum(row.purified for row in energies),
        images=[ImageEnergy(**row._asdict()) for row in energies],
    )
    with atomic_path(store.folders.report_path(job_id)) as partial:
        partial.write_text(report.model_dump_json())
    if not record.sync:  # a /v1/purify answer is sent and deleted at once: no card
        shards = ShardSet(paths, bounds, container.image_names(), chosen)
        write_preview(ctx, record, report, shards)
    store.mark_ended(job_id)
    if store.transition(job_id, JobStatus.running, JobStatus.finished):
        store.announce(record, WebhookEvent.completed)
    seconds = time.perf_counter() - started
    log.info(
        "job finished",
        extra={"job_id": job_id, "images": record.images, "finalize_s": round(seconds, 4)},
    )
    return str(result)
