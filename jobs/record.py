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

    @property
    def shards(self) -> int:
        return len(self.shard_bounds) - 1

    @property
    def work(self) -> int:
        """Image passes the job makes: one per image, and with a filter one more per
        image it purifies (all of them, until its ranking has chosen)."""
        if self.params.filter is None:
            return self.images
        return self.images + (self.images if self.selected is None else self.selected)


class Progress(BaseModel):
    done: int
    total: int
    images_per_s: float | None
    eta_s: float | None


class ImageEnergy(BaseModel):
    name: str
    energy_before: float | None  # None: the purifier gives no score (JPEG)
    energy_after: float | None
    purified: bool = True  # False: an energy filter passed it through as sent


class Report(BaseModel):
    """Per-image scores (an EBM's energy, a DDPM's denoising error; none for JPEG);
    a high score before purification marks an unusual image."""

    job: str
    model: str | None = None
    purifier: Spec  # type: ignore[valid-type]
    seed: int
    filter: float | str | None = None
    purified: int | None = None  # images purified (all without a filter); None: an older report
    images: list[ImageEnergy]
