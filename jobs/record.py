"""A job as both processes see it: its parameters, its status, its record in Redis,
its progress and its report. The API serves these models; the worker writes the
report through the same one."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from pureebm.purifiers import Spec
from pureebm.requests import Resolved


class JobParams(Resolved):
    """A job's parameters, resolved once, at submission (pureebm.requests): the model
    pinned to NAME:VERSION, the purifier's spec with the model's defaults filled in
    (Reps' DDPM pinned too), the filter resolved, the seed drawn. Every shard and
    the finaliser read these; nothing is resolved again."""

    seed: int


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    finished = "finished"
    failed = "failed"
    canceled = "canceled"


ACTIVE = (JobStatus.queued, JobStatus.running)


class WebhookEvent(StrEnum):
    start = "start"  # a worker took the job
    progress = "progress"  # images got done (at most one per interval)
    completed = "completed"  # the job ended: finished, failed or canceled


class Webhook(BaseModel):
    """Where a job's events are POSTed, and which of them (jobs.webhooks)."""

    url: str
    events: list[WebhookEvent]


class JobRecord(BaseModel):
    """What Redis holds about a job (its images live in the job's folder)."""

    id: str
    owner: str
    status: JobStatus
    kind: str  # container kind of the input: image, zip, tar, npz, files
    input_file: str  # stored input, relative to the job folder
    input_name: str  # the caller's file name
    input_bytes: int
    result_name: str
    images: int
    shard_bounds: list[int]  # where each shard starts in container order, then the total
    params: JobParams
    selected: int | None = None  # with a filter: how many images its ranking chose
    sync: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float
    error: str | None = None
    warnings: list[str] = []  # what the caller should know about the parameters it chose
    webhook: Webhook | None = None  # never shown by the API: its URL may hold a token

    @property
    def shards(self) -> int:
        return len(self.shard_bounds) - 1

    @property
    def work(self) -> int:
        """Image passes the job's progress counts: one per image, and with a filter
        one more per image, whether purified or passed through as sent (its
        ranking's choice is not known in advance; the total never changes)."""
        return self.images if self.params.filter is None else 2 * self.images

    @property
    def passed_through(self) -> int:
        """Images a filter's ranking left as sent (0 until it has chosen): done at once."""
        return 0 if self.selected is None else self.images - self.selected


class Progress(BaseModel):
    """Image passes done of the total; neither ever goes down. With a filter the
    total is twice the images: each is scored, then purified or passed through."""

    done: int
    total: int
    images_per_s: float | None
    eta_s: float | None
    queue_position: int | None = None  # queued: other jobs ahead of it in its lane


class ImageEnergy(BaseModel):
    name: str
    energy_before: float | None  # None: the purifier gives no score (JPEG)
    energy_after: float | None
    purified: bool = True  # False: an energy filter passed it through as sent
    psnr: float | None = None  # dB, purified against sent (99: unchanged); None: not purified


class Report(BaseModel):
    """Per-image scores (an EBM's energy, a DDPM's denoising error; none for JPEG);
    a high score before purification marks an unusual image."""

    job: str
    model: str | None = None
    purifier: Spec  # type: ignore[valid-type]
    score: str | None = None  # what energy_before/after hold: "energy", "denoising error"
    seed: int
    filter: float | str | None = None
    purified: int | None = None  # images purified (all without a filter); None: an older report
    images: list[ImageEnergy]
